"""Quantize a Keras model with keras_qrobust in a minute: PTQ, QAT with tfmot, save/load.

    .venv/bin/python examples/quickstart.py
"""

import numpy as np
import tensorflow_model_optimization as tfmot

import keras_qrobust as kq

keras = kq.keras  # the tf_keras module tfmot works with

x_train, y_train = kq.datasets.load("fashion_mnist", "train")
x_test, y_test = kq.datasets.load("fashion_mnist", "test")

kq.defenses.set_seed(0)
model = kq.zoo.cnn_small()
kq.defenses.train_classifier(model, x_train[:10000], y_train[:10000], epochs=2)
print(f"float: {kq.metrics.accuracy(model, x_test, y_test):.4f}")

# Post-training quantization (the cnn2snn flow): fold BatchNorm, per-axis weights,
# calibrated ReLU ranges, 8-bit first layer.
quantizer = kq.RobustQuantizer(weight_bits=4, activation_bits=4, input_weight_bits=8)
qmodel = quantizer.quantize(model, samples=x_train[:1024])
print(f"{quantizer}: {kq.metrics.accuracy(qmodel, x_test, y_test):.4f}")
for layer in qmodel.layers:
    if hasattr(layer, "quantizers"):
        print(f"  {layer.name}: {', '.join(f'{k}={v}' for k, v in layer.quantizers.items())}")

qmodel.save("/tmp/cnn_small_w4a4.keras")  # loads back without custom_objects
reloaded = keras.models.load_model("/tmp/cnn_small_w4a4.keras")
assert np.array_equal(reloaded.predict(x_test[:64], verbose=0), qmodel.predict(x_test[:64], verbose=0))

# Quantization-aware training with tfmot and the wXaY scheme.
annotated = tfmot.quantization.keras.quantize_annotate_model(model)
qat = tfmot.quantization.keras.quantize_apply(annotated, scheme=kq.WXAYScheme(4, 4))
kq.defenses.compile_classifier(qat)
qat.fit(x_train[:10000], y_train[:10000], epochs=1, batch_size=128, verbose=0)
print(f"QAT w4a4 after 1 epoch: {kq.metrics.accuracy(qat, x_test, y_test):.4f}")
