plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

// The ncnn CMake package for each ABI (see gradle.properties). Relative paths are resolved against
// this app/ folder; the literal ${ANDROID_ABI} is passed through for CMakeLists.txt to replace.
val ncnnDir: String = providers.gradleProperty("ncnnDir").orNull
    ?: "../ncnn-android/\${ANDROID_ABI}/lib/cmake/ncnn"
val ncnnCmakeDir: String = file(ncnnDir).invariantSeparatorsPath

android {
    namespace = "com.edgecompress.demo"
    compileSdk = 35
    ndkVersion = "27.2.12479018"

    defaultConfig {
        applicationId = "com.edgecompress.demo"
        minSdk = 24
        targetSdk = 35
        versionCode = 1
        versionName = "1.0"

        ndk {
            abiFilters += listOf("arm64-v8a", "armeabi-v7a")
        }
        externalNativeBuild {
            cmake {
                arguments += listOf(
                    "-DANDROID_STL=c++_shared",
                    "-DANDROID_SUPPORT_FLEXIBLE_PAGE_SIZES=ON", // 16 KB pages (Android 15+)
                    "-Dncnn_DIR=$ncnnCmakeDir",
                )
            }
        }
    }

    externalNativeBuild {
        cmake {
            path = file("src/main/cpp/CMakeLists.txt")
            version = "3.22.1"
        }
    }

    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_11
        targetCompatibility = JavaVersion.VERSION_11
    }
    kotlinOptions {
        jvmTarget = "11"
    }

    androidResources {
        // The ncnn weights are read whole at start-up; storing them uncompressed avoids inflating them.
        noCompress += listOf("bin", "param")
    }
}

dependencies {
    implementation("androidx.activity:activity-ktx:1.9.3")
}
