package com.edgecompress.demo

import android.content.res.AssetManager
import android.graphics.Bitmap
import java.io.Closeable

/** Asset names. model.json is the only one the app knows; it names the param, bin and labels assets. */
object Assets {
    const val MODEL_JSON = "model.json"
}

/** logcat tag of everything the app logs, the EC_BENCH lines included (`adb logcat -s edgecompress`). */
const val LOG_TAG = "edgecompress"

/**
 * Every native method of the app (implemented in src/main/cpp/jni_bridge.cpp as
 * `Java_com_edgecompress_demo_NativeClassifier_<name>`). Handles are pointers owned by native code:
 * use them through [Classifier], which frees them in [Classifier.close].
 * Native errors arrive as IllegalArgumentException (bad arguments) or RuntimeException.
 */
object NativeClassifier {
    init {
        System.loadLibrary("edgecompress_demo")
    }

    /** Positions in [nativeInputInfo]'s result (same order as `enum InputInfo` in jni_bridge.cpp). */
    const val INFO_WIDTH = 0
    const val INFO_HEIGHT = 1
    const val INFO_CHANNELS = 2
    const val INFO_CLASSES = 3
    const val INFO_TOP_K = 4
    const val INFO_THREADS = 5

    /** Reads [modelJsonAsset], then the assets it names; [threads] 0 takes model.json's "threads". */
    external fun nativeLoad(assetManager: AssetManager, modelJsonAsset: String, threads: Int): Long

    external fun nativeRelease(handle: Long)

    /** One line for the screen: name, precision, input size, classes, threads. */
    external fun nativeDescribe(handle: Long): String

    /** [width, height, channels, classes, top_k, threads]; see the INFO_ constants. */
    external fun nativeInputInfo(handle: Long): IntArray

    external fun nativeLabels(handle: Long): Array<String>

    /** Logits of one image given as Bitmap.getPixels ints (0xAARRGGBB), preprocessed in native code. */
    external fun nativeClassify(handle: Long, pixels: IntArray, width: Int, height: Int): FloatArray

    /** [preprocess_ms, inference_ms] of the last [nativeClassify]. */
    external fun nativeLastTimingMs(handle: Long): DoubleArray

    external fun nativeSoftmax(logits: FloatArray): FloatArray

    /** Indices of the [k] best scores, best first, ties to the lower index. */
    external fun nativeTopK(scores: FloatArray, k: Int): IntArray

    /**
     * Times [runs] forward passes (after [warmup] untimed ones) of a fixed input with [threads]
     * threads (0: the loaded setting) and ncnn powersave [powersave] (0 all, 1 little, 2 big cores);
     * returns the `EC_BENCH ...` line.
     */
    external fun nativeBenchmark(handle: Long, runs: Int, warmup: Int, threads: Int, powersave: Int): String
}

data class Prediction(val index: Int, val label: String, val probability: Float)

data class Classification(
    val top: List<Prediction>,
    val preprocessMs: Double,
    val inferenceMs: Double,
    val totalMs: Double,
)

/** A loaded model. Not thread-safe to close while another thread uses it; the activities run all
 * calls on one background executor and close it there. */
class Classifier private constructor(private var handle: Long) : Closeable {
    val description: String = NativeClassifier.nativeDescribe(handle)
    val labels: List<String> = NativeClassifier.nativeLabels(handle).toList()
    private val info: IntArray = NativeClassifier.nativeInputInfo(handle)
    val inputWidth: Int get() = info[NativeClassifier.INFO_WIDTH]
    val inputHeight: Int get() = info[NativeClassifier.INFO_HEIGHT]
    val topK: Int get() = info[NativeClassifier.INFO_TOP_K]
    val threads: Int get() = info[NativeClassifier.INFO_THREADS]

    fun classify(bitmap: Bitmap): Classification {
        val w = bitmap.width
        val h = bitmap.height
        val pixels = IntArray(w * h)
        bitmap.getPixels(pixels, 0, w, 0, 0, w, h)
        val t0 = System.nanoTime()
        val logits = NativeClassifier.nativeClassify(live(), pixels, w, h)
        val probs = NativeClassifier.nativeSoftmax(logits)
        val top = NativeClassifier.nativeTopK(probs, topK)
        val totalMs = (System.nanoTime() - t0) / 1e6
        val timing = NativeClassifier.nativeLastTimingMs(live())
        return Classification(
            top = top.map { Prediction(it, labels[it], probs[it]) },
            preprocessMs = timing[0],
            inferenceMs = timing[1],
            totalMs = totalMs,
        )
    }

    fun benchmark(runs: Int, warmup: Int, threads: Int, powersave: Int): String =
        NativeClassifier.nativeBenchmark(live(), runs, warmup, threads, powersave)

    private fun live(): Long {
        check(handle != 0L) { "the classifier is closed" }
        return handle
    }

    @Synchronized
    override fun close() {
        if (handle != 0L) {
            NativeClassifier.nativeRelease(handle)
            handle = 0L
        }
    }

    companion object {
        /** Loads the packaged model; throws RuntimeException naming what is missing or wrong. */
        fun load(assets: AssetManager, threads: Int = 0): Classifier {
            val handle = NativeClassifier.nativeLoad(assets, Assets.MODEL_JSON, threads)
            try {
                return Classifier(handle)
            } catch (e: Throwable) {
                NativeClassifier.nativeRelease(handle)
                throw e
            }
        }

        /** The key=value fields of an `EC_BENCH ...` line. */
        fun parseBenchLine(line: String): Map<String, String> =
            line.trim().split(Regex("\\s+")).drop(1).mapNotNull { token ->
                val eq = token.indexOf('=')
                if (eq > 0) token.substring(0, eq) to token.substring(eq + 1) else null
            }.toMap()
    }
}
