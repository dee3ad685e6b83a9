"""Host-side converters: FP32 package creation now; INT8 ONNX (Q/DQ), INT8 TFLite, TensorRT engines and the
validation report come with the converter issue. May use Python 3.10+."""
