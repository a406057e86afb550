"""transformers' own common model tests (``ModelTesterMixin``, from the sdist of the installed
transformers release) against HopeModel / HopeForCausalLM (titans, attention, hybrid) and
LlamaCMSForCausalLM.

scripts/bootstrap.sh fetches the tests (scripts/fetch_transformers_tests.py). Each skip below names
why the feature does not apply.
"""

import sys
import unittest
from pathlib import Path

import torch
import transformers
from parameterized import parameterized
from transformers.models.auto import modeling_auto

from hope_hf import HopeConfig, HopeForCausalLM, HopeModel, LlamaCMSConfig, LlamaCMSForCausalLM

from helpers import TWO_LEVELS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / ".cache" / "transformers_tests" / transformers.__version__))
try:
    from transformers_tests.test_modeling_common import ModelTesterMixin, ids_tensor, random_attention_mask
except ImportError as error:  # pragma: no cover - the set-up fetches them
    raise ImportError(
        f"transformers {transformers.__version__}'s common tests are missing ({error}); "
        "run `bash scripts/bootstrap.sh` (or python scripts/fetch_transformers_tests.py)"
    ) from error


class TinyTester:
    """What ModelTesterMixin asks of a model tester: a config and inputs, for tiny models."""

    batch_size, seq_length, vocab_size, is_training = 2, 7, 99, True
    hidden_size, num_hidden_layers, num_attention_heads = 32, 2, 4

    def __init__(self, parent, config_class, **config_fields):
        self.parent = parent
        self.config_class = config_class
        self.config_fields = config_fields
        self.num_hidden_layers = config_fields.get("num_hidden_layers", self.num_hidden_layers)

    def get_config(self):
        return self.config_class(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, intermediate_size=37, max_position_embeddings=64,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, **self.config_fields,
        )

    def prepare_config_and_inputs_for_common(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        attention_mask = random_attention_mask([self.batch_size, self.seq_length])
        return self.get_config(), {"input_ids": input_ids, "attention_mask": attention_mask}


HOPE_FIELDS = dict(titans_chunk_size=4, cms_levels=TWO_LEVELS)


class InTreeModelTests(ModelTesterMixin):
    """ModelTesterMixin knows in-tree models by the class names in transformers' auto mappings (a base
    model is skipped where it has no head to train, labels are made for causal LMs): ours are listed
    there for the duration of a test class."""

    # transformers' generation suite (tests/generation) is not in the sdist; generate() with the
    # recurrent cache is tested in tests/test_modeling.py and tests/test_in_context.py.
    all_generative_model_classes = ()
    IN_TREE_NAMES = [
        (modeling_auto.MODEL_MAPPING_NAMES, "hope", "HopeModel"),
        (modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "hope", "HopeForCausalLM"),
        (modeling_auto.MODEL_MAPPING_NAMES, "llama_cms", "LlamaCMSModel"),
        (modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "llama_cms", "LlamaCMSForCausalLM"),
    ]

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        for mapping, key, name in cls.IN_TREE_NAMES:
            mapping[key] = name

    @classmethod
    def tearDownClass(cls):
        for mapping, key, _ in cls.IN_TREE_NAMES:
            mapping.pop(key, None)
        super().tearDownClass()


class HopeCommonTests(InTreeModelTests):
    """Shared by the Hope variants; subclasses set the mixer."""

    all_model_classes = (HopeModel, HopeForCausalLM)
    config_fields: dict = {}

    def setUp(self):
        self.model_tester = TinyTester(self, HopeConfig, **HOPE_FIELDS, **self.config_fields)


class TestHopeTitansCommon(HopeCommonTests, unittest.TestCase):
    config_fields = dict(mixer="titans")
    has_attentions = False  # a titans-only model has no attention weights to return

    @parameterized.expand([("linear",), ("dynamic",), ("yarn",)])
    def test_model_rope_scaling_from_config(self, scaling_type):
        self.skipTest("a titans-only model has no rotary embedding to scale")


class TestHopeAttentionCommon(HopeCommonTests, unittest.TestCase):
    config_fields = dict(mixer="attention", num_key_value_heads=2)


class TestHopeHybridCommon(HopeCommonTests, unittest.TestCase):
    config_fields = dict(mixer=["titans", "attention"])

    def test_attention_outputs(self):
        """Overridden as in-tree hybrids do (e.g. Qwen3-Next): only the attention layers have weights
        to return, so there are as many as there are attention layers, not num_hidden_layers."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        num_attention_layers = sum(mixer == "attention" for mixer in config.mixers)
        T = self.model_tester.seq_length
        for model_class in self.all_model_classes:
            for by_config in (False, True):
                config.output_attentions = by_config
                model = model_class._from_config(config, attn_implementation="eager").eval()
                with torch.no_grad():
                    outputs = model(**inputs, output_attentions=True) if not by_config else model(**inputs)
                self.assertEqual(len(outputs.attentions), num_attention_layers)
                self.assertEqual(list(outputs.attentions[0].shape[-3:]), [config.num_attention_heads, T, T])


class TestLlamaCMSCommon(InTreeModelTests, unittest.TestCase):
    all_model_classes = (LlamaCMSForCausalLM,)

    def setUp(self):
        self.model_tester = TinyTester(
            self, LlamaCMSConfig, num_key_value_heads=2,
            cms_levels=[{"intermediate_size": 37, "update_period": 1}, {"intermediate_size": 16, "update_period": 4}],
        )
