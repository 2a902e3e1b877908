"""The ImageNet backbone: the checkpoint reader, the Keras port's answers, the network on it."""

import io
import json
import os
import pickle

import keras
import numpy as np
import pytest
import tensorflow as tf
from skimage import data, transform

from services.trainer.artifact.export import export_for_serving
from services.trainer.artifact.reexport import reexport
from services.trainer.modeling.config import CUSTOM, EFFICIENTNET_LITE0
from services.trainer.modeling.model import (
    GRADCAM_LAYER,
    architecture_info,
    build_network,
    gradcam_layer,
    is_folded,
    serving_form,
)
from services.trainer.modeling.pretrained import (
    FEATURE_CHANNELS,
    STRIDE16_LAYER,
    build_imagenet_classifier,
    imagenet_weights_path,
    load_imagenet_weights,
    normalize,
)
from services.trainer.modeling.torch_checkpoint import CheckpointError, load_state_dict

# ImageNet class indices: 281-285 the domestic cats, 967 espresso, 968 cup
CATS = set(range(281, 286))
COFFEE = {967, 968}


@pytest.fixture(scope="module")
def state():
    return load_state_dict(imagenet_weights_path())


def test_the_shipped_checkpoint_reads_as_efficientnet_lite0(state):
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_fc.weight"].shape == (1000, FEATURE_CHANNELS)
    assert all(value.dtype == np.float32 for key, value in state.items()
               if not key.endswith("num_batches_tracked"))
    assert np.isfinite(state["_bn1.running_var"]).all() and (state["_bn1.running_var"] > 0).all()


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    buffer = io.BytesIO()
    pickle.dump(0x1950A86A20F9469CFC6C, buffer)
    pickle.dump(1001, buffer)
    pickle.dump({}, buffer)
    pickle.dump({"weight": Exploit()}, buffer)
    path = tmp_path / "evil.pth"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="unexpected object"):
        load_state_dict(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_state_dict(path)


def test_the_ported_network_names_imagenet_pictures(state):
    """A wrong layout, padding or epsilon in the port turns these answers into noise."""
    model, sources = build_imagenet_classifier()
    load_imagenet_weights(model, sources, state)
    pictures = [transform.resize(picture, (224, 224), preserve_range=True, anti_aliasing=True)
                for picture in (data.chelsea(), data.coffee())]
    logits = model.predict(normalize(np.stack(pictures).astype(np.float32)), verbose=0)
    top3 = np.argsort(-logits, axis=1)[:, :3]
    assert set(top3[0]) <= CATS
    assert set(top3[1]) <= COFFEE | {925, 504}  # runners-up: consomme, coffee mug
    assert top3[1][0] in COFFEE


def test_the_pretrained_network_keeps_the_export_contract():
    model = build_network(EFFICIENTNET_LITE0, image_size=64, dropout=0.0, frozen_blocks=2)
    images = np.random.RandomState(0).randint(0, 256, (2, 64, 64, 1)).astype(np.float32)
    assert model(images).shape == (2, 3)
    assert model.get_layer(GRADCAM_LAYER).output.shape[-1] == FEATURE_CHANNELS
    batch_norms = [layer for layer in model.layers
                   if isinstance(layer, keras.layers.BatchNormalization)]
    assert batch_norms and not any(layer.trainable for layer in batch_norms)
    frozen = {layer.name for layer in model.layers if not layer.trainable and layer.weights}
    assert "effl0_conv_stem" in frozen and "effl0_blocks_1_depthwise_conv" in frozen
    assert "effl0_blocks_2_depthwise_conv" not in frozen and "logits" not in frozen
    # the grey film reaches the ImageNet network as three identical, normalised channels
    stem_input = keras.Model(model.inputs, model.get_layer("grey_to_rgb").output)(images).numpy()
    assert np.allclose(stem_input[..., 0], stem_input[..., 2])
    assert np.allclose(stem_input[..., 0], (images[..., 0] - 127.0) / 128.0)


def test_a_pretrained_export_is_rebuilt_from_its_own_variables(tmp_path):
    model = build_network(EFFICIENTNET_LITE0, image_size=64)
    info = architecture_info({"backbone": EFFICIENTNET_LITE0, "equalize": False})
    old = export_for_serving(model, base_path=tmp_path / "old", version=1, threshold=0.5,
                             extra_info=info)
    recorded = json.loads((old / "assets.extra" / "model_info.json").read_text())
    assert recorded["backbone"] == EFFICIENTNET_LITE0
    images = np.random.RandomState(3).randint(0, 256, (2, 64, 64, 1)).astype(np.uint8)
    new, difference = reexport(old, tmp_path / "new", 2, images)
    assert difference <= 1e-5
    outputs = tf.saved_model.load(str(new)).signatures["gradcam"](image=tf.constant(images))
    assert outputs["heatmap"].shape == (2, 64, 64)


def test_the_served_form_folds_every_batch_norm_and_answers_alike(tmp_path):
    model = build_network(EFFICIENTNET_LITE0, image_size=64, equalize=True)
    # statistics far from the identity, so that a wrong fold (axis, epsilon) shows
    rng = np.random.RandomState(5)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([gamma * rng.uniform(0.5, 1.5, gamma.shape),
                               beta + rng.normal(0, 0.1, beta.shape),
                               mean + rng.normal(0, 0.1, mean.shape),
                               variance * rng.uniform(0.5, 2.0, variance.shape)])
    served = serving_form(model)
    assert is_folded(served) and not is_folded(model)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in served.layers)
    assert "equalize" in {layer.name for layer in served.layers}
    assert serving_form(served) is served
    images = rng.randint(0, 256, (3, 64, 64, 1)).astype(np.float32)
    expected = model(images, training=False).numpy()
    assert np.abs(served(images).numpy() - expected).max() < 1e-4
    # the export serves the folded form and says so; its answers are the trained network's
    exported = export_for_serving(model, base_path=tmp_path, version=1, threshold=0.5,
                                  extra_info=architecture_info({"backbone": EFFICIENTNET_LITE0,
                                                                "equalize": True}))
    assert json.loads((exported / "assets.extra" / "model_info.json").read_text())[
        "batch_norm_folded"] is True
    outputs = tf.saved_model.load(str(exported)).signatures["serving_default"](
        image=tf.constant(images.astype(np.uint8)))
    probabilities = tf.nn.softmax(expected).numpy()
    assert np.abs(outputs["class_probabilities"].numpy() - probabilities).max() < 1e-5


def test_a_smaller_internal_size_keeps_the_input_contract_and_survives_reexport(tmp_path):
    model = build_network(EFFICIENTNET_LITE0, image_size=64, internal_size=32)
    assert model.inputs[0].shape[1:] == (64, 64, 1)
    # S/32 of the internal size: the heatmap is computed on the smaller grid
    assert model.get_layer(GRADCAM_LAYER).output.shape[1:3] == (1, 1)
    info = architecture_info({"backbone": EFFICIENTNET_LITE0, "internal_size": 32})
    assert info["internal_size"] == 32
    old = export_for_serving(model, base_path=tmp_path / "old", version=1, threshold=0.5,
                             extra_info=info)
    images = np.random.RandomState(4).randint(0, 256, (2, 64, 64, 1)).astype(np.uint8)
    new, difference = reexport(old, tmp_path / "new", 2, images)
    assert difference <= 1e-5
    recorded = json.loads((new / "assets.extra" / "model_info.json").read_text())
    assert recorded["internal_size"] == 32 and recorded["batch_norm_folded"] is True
    served = tf.saved_model.load(str(new)).signatures["gradcam"](image=tf.constant(images))
    assert served["heatmap"].shape == (2, 64, 64)
    # the last map is 1 x 1, which gives a flat heatmap: the 2 x 2 map at S/16 explains (an
    # untrained head may weigh every cell negative on a film, and that heatmap is zero)
    assert (np.ptp(served["heatmap"].numpy(), axis=(1, 2)) > 0.1).any()


def test_a_version_explained_on_its_last_map_is_reexported_onto_the_finer_one(tmp_path,
                                                                              monkeypatch):
    import services.trainer.artifact.export as export

    model = build_network(EFFICIENTNET_LITE0, image_size=64, internal_size=32)
    info = architecture_info({"backbone": EFFICIENTNET_LITE0, "internal_size": 32})
    with monkeypatch.context() as patch:  # as the export did before it chose the map
        patch.setattr(export, "gradcam_layer", lambda network: GRADCAM_LAYER)
        old = export_for_serving(model, base_path=tmp_path / "old", version=1, threshold=0.5,
                                 extra_info=info)
    recorded = json.loads((old / "assets.extra" / "model_info.json").read_text())
    assert recorded["gradcam_layer"] == GRADCAM_LAYER
    images = np.random.RandomState(4).randint(0, 256, (2, 64, 64, 1)).astype(np.uint8)
    # the heatmaps differ (a flat one against a varying one): only the predictions are compared
    new, difference = reexport(old, tmp_path / "new", 2, images)
    assert difference <= 1e-5
    assert json.loads((new / "assets.extra" / "model_info.json").read_text())[
        "gradcam_layer"] == STRIDE16_LAYER
    heatmaps = [tf.saved_model.load(str(folder)).signatures["gradcam"](
        image=tf.constant(images))["heatmap"].numpy() for folder in (old, new)]
    assert np.abs(heatmaps[0] - heatmaps[1]).max() > 0.1


def test_a_network_with_a_coarse_last_map_is_explained_on_its_map_at_one_sixteenth():
    shrunk = build_network(EFFICIENTNET_LITE0, image_size=224, internal_size=160, imagenet=False)
    assert shrunk.get_layer(GRADCAM_LAYER).output.shape[1:3] == (5, 5)
    assert gradcam_layer(shrunk) == STRIDE16_LAYER
    assert shrunk.get_layer(STRIDE16_LAYER).output.shape[1:] == (10, 10, 112)
    assert gradcam_layer(serving_form(shrunk)) == STRIDE16_LAYER  # the layer survives folding
    # 7 x 7 is fine enough: the last map, as before
    assert gradcam_layer(build_network(EFFICIENTNET_LITE0, image_size=224,
                                       imagenet=False)) == GRADCAM_LAYER
    # a network without a map at S/16 keeps its last map however coarse
    assert gradcam_layer(build_network(CUSTOM, image_size=64)) == GRADCAM_LAYER
