"""Android: package a compressed ncnn model into ``android_demo/`` and time it on a phone over adb."""

from edgecompress.android.package import MODEL_JSON, PACKAGED, build_assets, find_ncnn_model, package

__all__ = ["MODEL_JSON", "PACKAGED", "build_assets", "find_ncnn_model", "package"]
