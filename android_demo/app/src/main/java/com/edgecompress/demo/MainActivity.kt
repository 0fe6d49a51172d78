package com.edgecompress.demo

import android.content.ActivityNotFoundException
import android.content.Intent
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.net.Uri
import android.os.Bundle
import android.util.Log
import android.widget.Button
import android.widget.ImageView
import android.widget.TextView
import android.widget.Toast
import androidx.activity.ComponentActivity
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import java.util.Locale
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors
import kotlin.math.min

/**
 * Pick a photo (system photo picker, or GET_CONTENT where there is none) or take one with the
 * camera app; the centre square of it is classified by the packaged model, showing the top-k
 * labels with probabilities and the latency.
 */
class MainActivity : ComponentActivity() {
    // All native work runs on this one thread; `classifier` is only touched there.
    private val worker: ExecutorService = Executors.newSingleThreadExecutor()
    private var classifier: Classifier? = null

    private lateinit var modelText: TextView
    private lateinit var imageView: ImageView
    private lateinit var resultText: TextView
    private lateinit var latencyText: TextView

    private val pickPhoto =
        registerForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri -> uri?.let(::classifyUri) }
    private val getContent =
        registerForActivityResult(ActivityResultContracts.GetContent()) { uri -> uri?.let(::classifyUri) }
    private val takePicture =
        registerForActivityResult(ActivityResultContracts.TakePicturePreview()) { bitmap -> bitmap?.let(::classifyBitmap) }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        modelText = findViewById(R.id.model_text)
        imageView = findViewById(R.id.image_view)
        resultText = findViewById(R.id.result_text)
        latencyText = findViewById(R.id.latency_text)

        findViewById<Button>(R.id.pick_button).setOnClickListener {
            if (ActivityResultContracts.PickVisualMedia.isPhotoPickerAvailable(this)) {
                pickPhoto.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly))
            } else {
                getContent.launch("image/*")
            }
        }
        findViewById<Button>(R.id.camera_button).setOnClickListener {
            try {
                takePicture.launch(null)
            } catch (e: ActivityNotFoundException) {
                Toast.makeText(this, R.string.no_camera, Toast.LENGTH_LONG).show()
            }
        }
        findViewById<Button>(R.id.benchmark_button).setOnClickListener {
            startActivity(Intent(this, BenchmarkActivity::class.java))
        }

        modelText.setText(R.string.loading)
        worker.execute {
            val text = try {
                Classifier.load(assets).also { classifier = it }.description
            } catch (e: RuntimeException) {
                Log.e(LOG_TAG, "loading the model failed", e)
                getString(R.string.load_failed, e.message)
            }
            runOnUiThread { modelText.text = text }
        }
    }

    override fun onDestroy() {
        worker.execute {
            classifier?.close()
            classifier = null
        }
        worker.shutdown()
        super.onDestroy()
    }

    private fun classifyUri(uri: Uri) = worker.execute {
        val bitmap = try {
            decode(uri)
        } catch (e: Exception) {
            Log.e(LOG_TAG, "decoding $uri failed", e)
            null
        }
        if (bitmap == null) {
            runOnUiThread { resultText.setText(R.string.decode_failed) }
        } else {
            classifyOnWorker(bitmap)
        }
    }

    private fun classifyBitmap(bitmap: Bitmap) = worker.execute { classifyOnWorker(centreSquare(argb8888(bitmap))) }

    private fun classifyOnWorker(bitmap: Bitmap) {
        val c = classifier
        if (c == null) {
            runOnUiThread { resultText.setText(R.string.no_model) }
            return
        }
        try {
            val r = c.classify(bitmap)
            val lines = r.top.mapIndexed { i, p ->
                String.format(Locale.US, "%d. %s  %.1f %%", i + 1, p.label, 100f * p.probability)
            }
            val latency = getString(R.string.latency, r.preprocessMs, r.inferenceMs, r.totalMs)
            runOnUiThread {
                imageView.setImageBitmap(bitmap)
                resultText.text = lines.joinToString("\n")
                latencyText.text = latency
            }
        } catch (e: RuntimeException) {
            Log.e(LOG_TAG, "classification failed", e)
            runOnUiThread { resultText.text = getString(R.string.classify_failed, e.message) }
        }
    }

    /** The image at [uri] as an ARGB_8888 centre square, decoded at a reduced size: the decoder's
     * power-of-two subsampling averages pixels, so the native bilinear resize (which does not
     * antialias) starts from at most about 2 * DECODE_MIN_SIDE pixels. */
    private fun decode(uri: Uri): Bitmap? {
        val bounds = BitmapFactory.Options().apply { inJustDecodeBounds = true }
        contentResolver.openInputStream(uri)?.use { BitmapFactory.decodeStream(it, null, bounds) }
        if (bounds.outWidth <= 0 || bounds.outHeight <= 0) return null
        var sample = 1
        while (min(bounds.outWidth, bounds.outHeight) / (sample * 2) >= DECODE_MIN_SIDE) sample *= 2
        val options = BitmapFactory.Options().apply {
            inSampleSize = sample
            inPreferredConfig = Bitmap.Config.ARGB_8888
        }
        val bitmap = contentResolver.openInputStream(uri)?.use { BitmapFactory.decodeStream(it, null, options) }
            ?: return null
        return centreSquare(argb8888(bitmap))
    }

    private fun argb8888(b: Bitmap): Bitmap =
        if (b.config == Bitmap.Config.ARGB_8888) b else b.copy(Bitmap.Config.ARGB_8888, false)

    private fun centreSquare(b: Bitmap): Bitmap {
        if (b.width == b.height) return b
        val s = min(b.width, b.height)
        return Bitmap.createBitmap(b, (b.width - s) / 2, (b.height - s) / 2, s, s)
    }

    private companion object {
        const val DECODE_MIN_SIDE = 256
    }
}
