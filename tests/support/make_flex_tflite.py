"""Remakes tests/support/flex_erf.tflite: a TFLite holding a Select-TF op (FlexErf), which LiteRT cannot run.
Run with the tflite toolchain's Python (it has TensorFlow):
    ~/.cache/edgesight/toolchains/tflite/bin/python tests/support/make_flex_tflite.py tests/support/flex_erf.tflite
"""
import tensorflow as tf, sys
class M(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def __call__(self, x):
        return tf.math.erf(x) * 2.0
m = M()
conv = tf.lite.TFLiteConverter.from_concrete_functions([m.__call__.get_concrete_function()], m)
conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
open(sys.argv[1], "wb").write(conv.convert())
