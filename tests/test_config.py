import pytest

from hope_hf import HopeConfig
from transformers import AutoConfig

from helpers import tiny_config


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(num_attention_heads=5), "num_attention_heads"),
        (dict(num_key_value_heads=3), "num_key_value_heads"),
        (dict(titans_chunk_size=0), "titans_chunk_size"),
        (dict(mixer="mamba"), "mixer"),
        (dict(mixer=["titans", "gru"]), "mixer\\[1\\]"),
        (dict(mixer=["titans"]), "mixer"),
        (dict(cms_variant="parallel"), "cms_variant"),
        (dict(cms_levels=[]), "cms_levels"),
        (dict(cms_levels=[{"intermediate_size": 0, "update_period": 1}]), "cms_levels\\[0\\]\\['intermediate_size'\\]"),
        (dict(cms_levels=[{"intermediate_size": 8}]), "cms_levels\\[0\\]"),
        (dict(titans_eta_max=0.0), "titans_eta_max"),
        (dict(titans_memory_depth=3), "titans_memory_depth"),
        (dict(titans_memory_depth=2, titans_self_referential=False), "titans_memory_depth"),
        (dict(titans_memory_depth=2, titans_memory_init_std=0.0), "titans_memory_depth"),
        (dict(sliding_window=0), "sliding_window"),
    ],
)
def test_bad_values_raise_value_error_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        tiny_config(**overrides)


def test_defaults_and_derived_fields():
    config = tiny_config(mixer=["titans", "attention"], cms_levels=None, intermediate_size=40)
    assert config.layer_types == ["linear_attention", "full_attention"]
    assert config.head_dim == 8 and config.num_key_value_heads == 4
    assert config.cms_levels == [{"intermediate_size": 40, "update_period": 1}]
    assert tiny_config(mixer="attention", sliding_window=4).layer_types == ["sliding_attention"] * 2


def test_round_trip_and_auto_config(tmp_path):
    config = tiny_config(mixer=["attention", "titans"], cms_variant="independent")
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, HopeConfig)
    strip = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}
    assert strip(loaded.to_dict()) == strip(config.to_dict())
    assert isinstance(AutoConfig.for_model("hope"), HopeConfig)


@pytest.mark.parametrize("field", ["titans_value_projection", "titans_normalize_values"])
def test_value_options_must_be_booleans(field):
    with pytest.raises(Exception, match=f"'{field}' expected bool"):
        tiny_config(**{field: "yes"})
