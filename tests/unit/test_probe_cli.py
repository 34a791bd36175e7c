import json

from pitfalls.cli import main


def _probe(capsys, *args):
    assert main(["probe", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_probe_cli_flags_bn_leakage_in_train_mode_not_groupnorm(capsys):
    bn = _probe(capsys, "--backbone", "resnet18", "--norm", "batch", "--seq-len", "8")
    assert bn["probe_leak_train"] == 1.0 and bn["probe_leak_eval"] == 0.0
    assert bn["probe_batch_dependent_train"] == 1.0 and "probe_stale_mean_shift" in bn
    gn = _probe(capsys, "--backbone", "resnet18", "--norm", "group", "--seq-len", "8")
    assert gn["probe_leak_train"] == 0.0 and gn["probe_batch_dependent_train"] == 0.0
    assert gn["probe_train_eval_output_gap"] == 0.0 and "probe_stale_mean_shift" not in gn


def test_probe_cli_table_and_validation(capsys):
    assert main(["probe", "--backbone", "test_resnet", "--norm", "batch_eval", "--seq-len", "4",
                 "--frame-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "leakage (train mode)         clean" in out
    assert main(["probe", "--backbone", "test_nfnet", "--norm", "batch"]) == 2
    assert "'batch' is not supported for NormFreeNet" in capsys.readouterr().err
