"""A small local stand-in for TensorFlow Serving: the same gRPC/REST API, flags, model folder
layout and model config file, so clients cannot tell it from the `tensorflow/serving` image."""
