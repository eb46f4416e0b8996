"""Presets carry the spec's numbers; overrides and serialisation round-trip."""

import json

import pytest

from pgolf.config import (
    ModelConfig,
    apply_overrides,
    baseline,
    get_preset,
    pr198,
    run_config_from_dict,
    run_config_to_dict,
    tiny,
)
from pgolf.errors import PgolfError


def test_pr198_model_constants_match_spec_section_3():
    model = pr198().model
    assert (model.num_layers, model.model_dim, model.num_heads, model.num_kv_heads) == (11, 512, 8, 4)
    assert model.head_dim == 64 and model.vocab_size == 1024 and model.mlp_hidden == 1536
    assert (model.bigram_buckets, model.bigram_dim, model.bigram_scale_init) == (2048, 128, 0.05)
    assert model.smear_gate and not model.document_isolation
    assert (model.rope_base, model.rope_reference_len) == (10000.0, 1024)
    assert (model.logit_softcap, model.qk_gain_init, model.tied_embed_init_std) == (30.0, 1.5, 0.005)
    assert (model.num_encoder_layers, model.num_decoder_layers) == (5, 6)


def test_pr198_run_constants_match_spec_sections_4_to_6():
    config = pr198()
    assert config.global_batch_tokens == 786_432 == 8 * 48 * 2048
    assert config.train_seq_len == 2048
    assert [config.grad_accum_steps(w) for w in (1, 2, 4, 8)] == [8, 4, 2, 1]
    assert (config.matrix_lr, config.scalar_lr, config.embed_lr) == (0.025, 0.025, 0.035)
    assert (config.muon_momentum_start, config.muon_momentum, config.muon_momentum_warmup_steps) == (0.92, 0.99, 1500)
    assert (config.muon_ns_steps, config.muon_weight_decay, config.adam_weight_decay) == (5, 0.04, 0.04)
    assert (config.adam_beta1, config.adam_beta2, config.adam_eps) == (0.9, 0.95, 1e-8)
    assert config.grad_clip_norm == 0.3
    assert (config.warmdown_steps, config.warmup_steps, config.max_wallclock_seconds) == (3000, 20, 600.0)
    assert config.swa_enabled and (config.swa_every, config.swa_start_lr_mult) == (200, 0.5)
    assert config.quant_scheme == "pr198"
    assert (config.eval_seq_len, config.eval_stride, config.eval_batch_seqs) == (2048, 64, 32)


def test_baseline_matches_spec_section_8():
    config = baseline()
    model = config.model
    assert (model.num_layers, model.model_dim, model.mlp_hidden) == (9, 512, 1024)
    assert model.bigram_buckets == 0 and not model.smear_gate
    assert (config.train_seq_len, config.global_batch_tokens) == (1024, 524_288)
    assert (config.matrix_lr, config.muon_momentum, config.muon_momentum_start) == (0.04, 0.95, 0.85)
    assert config.muon_momentum_warmup_steps == 500
    assert (config.embed_lr, config.scalar_lr, config.warmdown_steps) == (0.05, 0.04, 1200)
    assert config.muon_weight_decay == config.adam_weight_decay == config.grad_clip_norm == 0
    assert not config.swa_enabled and config.quant_scheme == "baseline"
    assert config.eval_stride == config.eval_seq_len == 1024


def test_tiny_keeps_every_technique_on():
    config = tiny()
    assert config.model.smear_gate and config.model.bigram_buckets > 0 and config.swa_enabled
    assert config.muon_weight_decay > 0 and config.warmdown_steps > 0 and config.model.num_layers >= 2
    config.validate()


def test_overrides_reach_run_and_model_fields():
    config = apply_overrides(pr198(), ["iterations=500", "model.num_layers=9", "smear_gate=false",
                                       "matrix_lr=0.03", "data_dir=/tmp/x"])
    assert config.iterations == 500 and config.model.num_layers == 9 and config.model.smear_gate is False
    assert config.matrix_lr == 0.03 and config.data_dir == "/tmp/x"


@pytest.mark.parametrize("assignment, message", [
    ("no_such_key=1", "unknown setting"),
    ("iterations=abc", "expected a int"),
    ("swa_enabled=maybe", "expected a boolean"),
    ("iterations", "key=value"),
])
def test_bad_overrides_are_named(assignment, message):
    with pytest.raises(PgolfError, match=message):
        apply_overrides(pr198(), [assignment])


def test_config_json_round_trip():
    config = apply_overrides(tiny(), ["seed=7", "document_isolation=true"])
    data = json.loads(json.dumps(run_config_to_dict(config)))
    assert run_config_from_dict(data) == config


def test_unknown_preset_and_invalid_shapes_are_rejected():
    with pytest.raises(PgolfError, match="unknown preset"):
        get_preset("nope")
    with pytest.raises(PgolfError, match="num_kv_heads"):
        ModelConfig(num_heads=8, num_kv_heads=3).validate()
    with pytest.raises(PgolfError, match="processes"):
        pr198().grad_accum_steps(3)


# ---------------------------------------------------------------- frontier (spec frontier.md §3, §4, §8)

from dataclasses import replace  # noqa: E402

from pgolf.config import frontier, frontier_tiny  # noqa: E402


def test_frontier_model_constants_match_spec_section_3():
    model = frontier().model
    assert (model.vocab_size, model.num_layers, model.model_dim, model.num_heads, model.num_kv_heads) == \
        (8192, 11, 512, 8, 4)
    assert model.head_dim == 64 and model.mlp_hidden == 2048 and model.mlp_negative_slope == 0.5
    assert model.bigram_buckets == 0 and model.smear_gate and model.smear_gate_window == 12
    assert model.xsa_layers == tuple(range(11)) and model.rope_dims == 16 and model.rope_base == 10000.0
    assert model.layer_norm_scale and model.skip_gates and model.document_isolation
    assert (model.loop_layers, model.num_loop_passes, model.parallel_lanes_from) == ((3, 4, 5), 3, 8)
    assert (model.attn_gate_window, model.attn_gate_scale) == (12, 0.5)
    assert (model.qk_gain_init, model.logit_softcap, model.tied_embed_init_std) == (5.0, 30.0, 0.005)


def test_frontier_run_constants_match_spec_sections_4_and_8():
    config = frontier()
    assert (config.global_batch_tokens, config.micro_batch_tokens) == (786_432, 98_304) and config.packed_rows
    assert config.grad_accum_steps(8) == 1 and config.train_seq_len == 2048
    assert (config.matrix_lr, config.muon_momentum, config.muon_momentum_start) == (0.026, 0.97, 0.92)
    assert config.muon_momentum_warmup_steps == 1500 and config.muon_ns_steps == 5
    assert config.muon_row_normalize and config.muon_coefficients == "polar_express"
    assert config.muon_weight_decay == 0.095
    assert (config.adam_beta1, config.adam_beta2, config.adam_eps) == (0.9, 0.99, 1e-8)
    assert (config.embed_lr, config.embed_weight_decay) == (0.03, 0.085)
    assert (config.scalar_lr, config.adam_weight_decay) == (0.02, 0.02)
    assert config.grad_clip_norm == 0.3 and config.grad_clip_local
    assert config.lr_schedule == "fraction_warmdown" and (config.warmdown_fraction, config.lr_floor) == (0.85, 0.10)
    assert (config.max_wallclock_seconds, config.train_reserve_seconds) == (600.0, 0.5)
    assert config.ema_decay == 0.9965 and not config.swa_enabled
    assert config.looping_start_fraction == 0.35 and config.val_every == 0
    assert not config.progressive_seq_lens  # #2014's progressive context is not part of #1855


def test_frontier_tiny_keeps_every_switch_at_tiny_size():
    config = frontier_tiny()
    model, reference = config.model, frontier().model
    assert (model.num_layers, model.model_dim, model.vocab_size) == (4, 256, 1024)
    for name in ("mlp_mult", "mlp_negative_slope", "smear_gate_window", "rope_dims", "layer_norm_scale",
                 "skip_gates", "num_loop_passes", "attn_gate_window", "attn_gate_scale", "qk_gain_init"):
        assert getattr(model, name) == getattr(reference, name), name
    assert model.xsa_layers == (0, 1, 2, 3) and model.loop_layers == (1, 2) and model.parallel_lanes_from == 3
    assert config.muon_coefficients == "polar_express" and config.ema_decay > 0
    config.validate()


def test_tuple_fields_from_overrides_and_json():
    config = apply_overrides(pr198(), ["xsa_layers=8,9,10", "loop_layers=4,5", "num_loop_passes=2",
                                       "progressive_seq_lens=1024,2048", "progressive_fractions=0.25"])
    assert config.model.xsa_layers == (8, 9, 10) and config.model.loop_layers == (4, 5)
    assert config.progressive_seq_lens == (1024, 2048) and config.progressive_fractions == (0.25,)
    config.validate()
    assert apply_overrides(frontier(), ["xsa_layers="]).model.xsa_layers == ()
    data = json.loads(json.dumps(run_config_to_dict(frontier())))
    assert run_config_from_dict(data) == frontier()
    with pytest.raises(PgolfError, match="comma-separated int"):
        apply_overrides(pr198(), ["xsa_layers=a,b"])


@pytest.mark.parametrize("changes, message", [
    ({"xsa_layers": (11,)}, "xsa_layers"),
    ({"rope_dims": 7}, "rope_dims"),
    ({"loop_layers": (3, 5)}, "consecutive"),
    ({"loop_layers": (), "num_loop_passes": 3}, "num_loop_passes"),
    ({"parallel_lanes_from": 5}, "parallel_lanes_from"),
    ({"attn_gate_window": 600}, "attn_gate_window"),
    ({"smear_gate": False}, "smear_gate_window"),
])
def test_bad_frontier_switches_are_user_errors(changes, message):
    with pytest.raises(PgolfError, match=message):
        replace(frontier().model, **changes).validate()
