package com.edgecompress.demo

import android.os.Bundle
import android.util.Log
import android.view.View
import android.widget.Button
import android.widget.EditText
import android.widget.ProgressBar
import android.widget.TextView
import androidx.activity.ComponentActivity
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

/**
 * Times the packaged model on a fixed input (the same one `edgecompress_bench` uses) and shows
 * min / median / max / mean / p90. Each run also goes to logcat, tag "edgecompress", as one
 * parseable line: `EC_BENCH model=... precision=... threads=... powersave=... warmup=... runs=...
 * min_ms=... median_ms=... max_ms=... mean_ms=... p90_ms=...`.
 *
 * Scriptable over adb (the activity is exported for that):
 *   adb shell am start -n com.edgecompress.demo/.BenchmarkActivity --ei runs 200 --ei warmup 20 \
 *       --ei threads 4 --ei powersave 2 --ez autostart true
 *   adb logcat -s edgecompress
 */
class BenchmarkActivity : ComponentActivity() {
    private val worker: ExecutorService = Executors.newSingleThreadExecutor()
    private var classifier: Classifier? = null // only touched on `worker`

    private lateinit var modelText: TextView
    private lateinit var runsInput: EditText
    private lateinit var warmupInput: EditText
    private lateinit var threadsInput: EditText
    private lateinit var powersaveInput: EditText
    private lateinit var runButton: Button
    private lateinit var progress: ProgressBar
    private lateinit var resultText: TextView
    private lateinit var lineText: TextView

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_benchmark)
        modelText = findViewById(R.id.bench_model_text)
        runsInput = findViewById(R.id.runs_input)
        warmupInput = findViewById(R.id.warmup_input)
        threadsInput = findViewById(R.id.threads_input)
        powersaveInput = findViewById(R.id.powersave_input)
        runButton = findViewById(R.id.run_button)
        progress = findViewById(R.id.bench_progress)
        resultText = findViewById(R.id.bench_result_text)
        lineText = findViewById(R.id.bench_line_text)

        runsInput.setText(intent.getIntExtra(EXTRA_RUNS, DEFAULT_RUNS).toString())
        warmupInput.setText(intent.getIntExtra(EXTRA_WARMUP, DEFAULT_WARMUP).toString())
        powersaveInput.setText(intent.getIntExtra(EXTRA_POWERSAVE, 0).toString())
        runButton.isEnabled = false
        runButton.setOnClickListener { start() }
        modelText.setText(R.string.loading)

        val autostart = intent.getBooleanExtra(EXTRA_AUTOSTART, false)
        val threadsExtra = intent.getIntExtra(EXTRA_THREADS, 0)
        worker.execute {
            try {
                val c = Classifier.load(assets).also { classifier = it }
                runOnUiThread {
                    modelText.text = c.description
                    threadsInput.setText((if (threadsExtra > 0) threadsExtra else c.threads).toString())
                    runButton.isEnabled = true
                    if (autostart) start()
                }
            } catch (e: RuntimeException) {
                Log.e(LOG_TAG, "loading the model failed", e)
                runOnUiThread { modelText.text = getString(R.string.load_failed, e.message) }
            }
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

    private fun readInt(input: EditText, min: Int, max: Int): Int? {
        val v = input.text.toString().trim().toIntOrNull()
        if (v == null || v < min || v > max) {
            input.error = getString(R.string.invalid_number, min, max)
            return null
        }
        return v
    }

    private fun start() {
        val runs = readInt(runsInput, 1, 100_000) ?: return
        val warmup = readInt(warmupInput, 0, 100_000) ?: return
        val threads = readInt(threadsInput, 1, 64) ?: return
        val powersave = readInt(powersaveInput, 0, 2) ?: return
        runButton.isEnabled = false
        progress.visibility = View.VISIBLE
        resultText.setText(R.string.running)
        lineText.text = ""
        worker.execute {
            val c = classifier ?: return@execute
            val (summary, line) = try {
                val benchLine = c.benchmark(runs, warmup, threads, powersave)
                Log.i(LOG_TAG, benchLine)
                val f = Classifier.parseBenchLine(benchLine)
                getString(
                    R.string.bench_summary,
                    f["min_ms"], f["median_ms"], f["max_ms"], f["mean_ms"], f["p90_ms"], runs, threads,
                ) to benchLine
            } catch (e: RuntimeException) {
                Log.e(LOG_TAG, "benchmark failed", e)
                getString(R.string.bench_failed, e.message) to ""
            }
            runOnUiThread {
                resultText.text = summary
                lineText.text = line
                progress.visibility = View.GONE
                runButton.isEnabled = true
            }
        }
    }

    companion object {
        const val EXTRA_RUNS = "runs"
        const val EXTRA_WARMUP = "warmup"
        const val EXTRA_THREADS = "threads"
        const val EXTRA_POWERSAVE = "powersave"
        const val EXTRA_AUTOSTART = "autostart"
        private const val DEFAULT_RUNS = 100
        private const val DEFAULT_WARMUP = 10
    }
}
