"""Encoders for the personalization metrics: validation, determinism, save/load, the paper path."""

import json

import numpy as np
import pytest
import torch

from bat.config import build
from bat.image.encoders import (CONFIG_FILE, WEIGHTS_FILE, EncoderConfig, PretrainedEncoders, SentenceEncoder,
                          TrainedEncoders, build_or_load, load_encoders, match_concepts, random_affine,
                          retrieval_report, save_encoders, train_encoders)
from bat.errors import ConfigError
from bat.image.data import load_image_set

SMOKE = dict(source="train", image_model_id="facebook/dinov2-base",
             clip_model_id="openai/clip-vit-base-patch32", text_encoder="data/raw/minilm",
             channels=[4, 8], embedding_dim=8, steps=3, batch_size=8, learning_rate=1e-2, seed=0)


def smoke_config(**changes) -> EncoderConfig:
    return build(EncoderConfig, {**SMOKE, **changes}, "encoders")


@pytest.fixture(scope="module")
def images_dir(smoke_root):
    return smoke_root / "data" / "prepared" / "images"


@pytest.fixture(scope="module")
def backbone_set(images_dir):
    return load_image_set(images_dir / "backbone.npz")


@pytest.fixture(scope="module")
def trained(backbone_set):
    return train_encoders(smoke_config(), backbone_set.images[:16], backbone_set.captions[:16])


@pytest.mark.parametrize("field, value, message", [
    ("source", "download", r"encoders.source: 'download' is not allowed; choose one of \['train', 'pretrained'\]"),
    ("channels", [], r"encoders.channels: needs at least one conv block"),
    ("channels", [8, 0], r"encoders.channels: 0 must be a positive integer"),
    ("channels", "32", r"encoders.channels: '32' must be a list, e.g. \[32\]"),
    ("steps", 0, r"encoders.steps: 0 must be a positive integer"),
    ("batch_size", 1.5, r"encoders.batch_size: 1.5 must be a positive integer"),
    ("learning_rate", -1.0, r"encoders.learning_rate: -1.0 must be a positive number"),
    ("clip_model_id", "", r"encoders.clip_model_id: '' must be a non-empty hub id or folder"),
])
def test_bad_parameters_name_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message):
        smoke_config(**{field: value})


def test_unknown_and_missing_parameters_are_named():
    with pytest.raises(ConfigError, match=r"unknown parameter encoders.dino"):
        build(EncoderConfig, {**SMOKE, "dino": 1}, "encoders")
    partial = {key: value for key, value in SMOKE.items() if key != "seed"}
    with pytest.raises(ConfigError, match=r"encoders.seed is missing"):
        build(EncoderConfig, partial, "encoders")


def test_training_is_deterministic(trained, backbone_set):
    encoders, log = trained
    again, log_again = train_encoders(smoke_config(), backbone_set.images[:16], backbone_set.captions[:16])
    assert [row["loss"] for row in log] == [row["loss"] for row in log_again]
    state, other = encoders.model.state_dict(), again.model.state_dict()
    assert state.keys() == other.keys()
    for name in state:
        assert torch.equal(state[name], other[name]), name


def test_another_seed_gives_other_weights(trained, backbone_set):
    encoders, _ = trained
    other, _ = train_encoders(smoke_config(seed=1), backbone_set.images[:16], backbone_set.captions[:16])
    assert not torch.equal(encoders.model.image_projection.weight, other.model.image_projection.weight)


def test_contrastive_training_lowers_the_loss(backbone_set):
    config = smoke_config(steps=40, batch_size=8, channels=[8, 16])
    _, log = train_encoders(config, backbone_set.images[:8], backbone_set.captions[:8])
    first, last = np.mean([r["loss"] for r in log[:5]]), np.mean([r["loss"] for r in log[-5:]])
    assert last < 0.5 * first
    assert all(0 < r["temperature"] <= 1 / 0.07 + 1e-6 for r in log)


def test_feature_shapes_and_other_image_sizes(trained, backbone_set):
    encoders, _ = trained
    images = backbone_set.images[:5]
    assert encoders.image_features(images).shape == (5, 8 * 16)  # channels[-1] on a 4x4 grid
    assert encoders.clip_image_features(images).shape == (5, 8)
    assert encoders.clip_text_features(["grinning face", "red heart"]).shape == (2, 8)
    # Generated images may have another size: they are resized to the training resolution.
    larger = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)
    assert encoders.image_features(larger).shape == (5, 8 * 16)
    with pytest.raises(ConfigError, match=r"images: expected uint8 \[N, H, W, 3\]"):
        encoders.image_features(images.astype(np.float32))


def test_save_then_load_gives_identical_features(trained, backbone_set, tmp_path):
    encoders, _ = trained
    folder = save_encoders(encoders, tmp_path / "encoders")
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    save_encoders(encoders, folder)  # overwriting swaps the folder, leaving no partial copies
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoders"]
    loaded = load_encoders(folder)
    assert isinstance(loaded, TrainedEncoders)
    images, texts = backbone_set.images[16:24], ["grinning face", "red heart in sks style"]
    np.testing.assert_array_equal(loaded.image_features(images), encoders.image_features(images))
    np.testing.assert_array_equal(loaded.clip_image_features(images), encoders.clip_image_features(images))
    np.testing.assert_array_equal(loaded.clip_text_features(texts), encoders.clip_text_features(texts))
    meta = json.loads((folder / CONFIG_FILE).read_text())
    assert meta["config"]["channels"] == SMOKE["channels"] and meta["resolution"] == images.shape[1]


def test_loading_a_folder_without_encoders_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"holds no encoders \(encoders.json missing\)"):
        load_encoders(tmp_path)


def test_sentence_embeddings_ignore_padding(raw):
    """Masked mean pooling: a caption's embedding does not depend on what it is batched with."""
    sentences = SentenceEncoder(raw / "minilm")
    alone = sentences(["cat"])
    batched = sentences(["cat", "a much longer caption that forces padding of the first one"])
    torch.testing.assert_close(batched[:1], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched.norm(dim=1), torch.ones(2))


def test_augmentation_keeps_shape_and_white_borders():
    pixels = torch.ones(4, 3, 16, 16)
    pixels[:, :, 6:10, 6:10] = -1  # a dark square in the middle of a white image
    moved = random_affine(pixels, torch.Generator().manual_seed(0))
    assert moved.shape == pixels.shape
    assert torch.allclose(moved[:, :, 0, :], torch.ones(4, 3, 16))  # the border stays white
    assert (moved < 0).any()  # the square is still there


def test_retrieval_report_across_styles(trained, backbone_set, images_dir):
    encoders, _ = trained
    style_set = load_image_set(images_dir / "noto_heldout.npz")
    images, others, captions = match_concepts(style_set, backbone_set)
    assert len(images) == len(others) == len(style_set)  # style concepts are concepts of D^B
    for image, other, caption in zip(images, others, captions):
        index = backbone_set.captions.index(caption)
        np.testing.assert_array_equal(other, backbone_set.images[index])
    report = retrieval_report(encoders, style_set, backbone_set)
    assert report["chance"] == pytest.approx(1 / len(style_set))
    for key in ("image_to_text", "image_to_image", "pixels_image_to_image"):
        assert 0 <= report[key] <= 1


# --------------------------------------------------------------------------- paper profile


@pytest.fixture(scope="module")
def hub_folders(tmp_path_factory):
    """Tiny random DINOv2 and CLIP saved with their processors, as hub folders are."""
    from transformers import (BitImageProcessor, CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor,
                              CLIPTokenizer, Dinov2Config, Dinov2Model)

    from tests.tiny_models import write_clip_vocab

    root = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             image_size=16, patch_size=8)).save_pretrained(root / "dinov2")
    BitImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                      image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(root / "dinov2")
    write_clip_vocab(root / "vocab")
    tokenizer = CLIPTokenizer(str(root / "vocab" / "vocab.json"), str(root / "vocab" / "merges.txt"),
                              model_max_length=16)
    text = dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  image_size=16, patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(root / "clip")
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 16},
                                                     crop_size={"height": 16, "width": 16}),
                  tokenizer=tokenizer).save_pretrained(root / "clip")
    return root / "dinov2", root / "clip"


def test_pretrained_encoders_compute_cls_and_clip_features(hub_folders, backbone_set):
    from transformers import AutoImageProcessor, AutoProcessor, CLIPModel, Dinov2Model

    dino_folder, clip_folder = hub_folders
    encoders = load_encoders((str(dino_folder), str(clip_folder)))
    assert isinstance(encoders, PretrainedEncoders)
    images, texts = backbone_set.images[:3], ["grinning face", "cat"]
    with torch.no_grad():
        pixels = AutoImageProcessor.from_pretrained(dino_folder)(images=list(images), return_tensors="pt")
        cls = Dinov2Model.from_pretrained(dino_folder)(**pixels).last_hidden_state[:, 0]
        clip, processor = CLIPModel.from_pretrained(clip_folder), AutoProcessor.from_pretrained(clip_folder)
        clip_pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
        vision = clip.vision_model(pixel_values=clip_pixels).pooler_output
        expected_image = clip.visual_projection(vision)
        tokens = processor.tokenizer(texts, padding=True, return_tensors="pt")
        pooled = clip.text_model(**tokens).pooler_output
        expected_text = clip.text_projection(pooled)
    # DINOv2's pooler output is its LayerNorm'd CLS token, the feature the paper profile uses.
    np.testing.assert_allclose(encoders.image_features(images), cls.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(encoders.clip_image_features(images), expected_image.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(encoders.clip_text_features(texts), expected_text.numpy(), rtol=1e-5, atol=1e-6)


def test_paper_profile_records_the_ids_and_loads_them_back(hub_folders, backbone_set, tmp_path):
    dino_folder, clip_folder = hub_folders
    config = smoke_config(source="pretrained", image_model_id=str(dino_folder), clip_model_id=str(clip_folder))
    encoders, log = build_or_load(config, backbone_set, tmp_path / "encoders")
    assert log is None and isinstance(encoders, PretrainedEncoders)
    assert sorted(p.name for p in (tmp_path / "encoders").iterdir()) == [CONFIG_FILE]
    direct = load_encoders((str(dino_folder), str(clip_folder)))
    images = backbone_set.images[:4]
    np.testing.assert_array_equal(encoders.image_features(images), direct.image_features(images))
    np.testing.assert_array_equal(encoders.clip_text_features(["cat"]), direct.clip_text_features(["cat"]))
    with pytest.raises(ConfigError, match="is 'pretrained': load them with load_encoders"):
        train_encoders(config, images, ["a", "b", "c", "d"])


def test_folders_without_models_are_a_clear_error(tmp_path):
    # A local folder keeps the test offline and fast (a hub id would try the network first).
    (tmp_path / "dino").mkdir()
    with pytest.raises(ConfigError, match=r"could not load encoders '.*dino'"):
        load_encoders((str(tmp_path / "dino"), str(tmp_path / "dino")))
