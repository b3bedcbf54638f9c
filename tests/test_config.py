import pytest

from nanogpt_lib import GPTConfig, part1_config


def test_defaults_are_gpt2_small():
    c = GPTConfig()
    assert (c.block_size, c.vocab_size, c.n_layer, c.n_head, c.n_embd, c.dropout, c.bias) == (
        1024, 50304, 12, 12, 768, 0.0, True)
    assert c.head_size == 64


def test_part1_preset_matches_the_seed_post():
    c = part1_config(vocab_size=4096)
    assert (c.block_size, c.vocab_size, c.n_layer, c.n_head, c.n_embd, c.dropout, c.bias) == (
        100, 4096, 4, 4, 128, 0.2, True)


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("block_size", 0, "positive integer"),
        ("vocab_size", -3, "positive integer"),
        ("n_layer", 0, "positive integer"),
        ("n_head", -1, "positive integer"),
        ("n_embd", 0, "positive integer"),
        ("n_layer", 2.5, "positive integer"),
        ("n_head", True, "positive integer"),
        ("dropout", 1.0, r"\[0, 1\)"),
        ("dropout", -0.1, r"\[0, 1\)"),
        ("dropout", "0.1", r"\[0, 1\)"),
        ("bias", 1, "True or False"),
    ],
)
def test_bad_values_name_field_value_and_rule(field, value, allowed):
    with pytest.raises(ValueError, match=rf"GPTConfig\.{field}={value!r}.*{allowed}"):
        GPTConfig(**{field: value})


def test_heads_must_divide_width_and_the_message_lists_valid_head_counts():
    with pytest.raises(ValueError, match=r"n_embd=130 is not divisible by n_head=4.*1, 2, 5, 10, 13"):
        GPTConfig(n_embd=130, n_head=4)


def test_dict_round_trip_and_unknown_fields():
    c = part1_config(vocab_size=300)
    assert GPTConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match=r"unknown GPTConfig field\(s\) \['n_experts'\]"):
        GPTConfig.from_dict({**c.to_dict(), "n_experts": 8})
