"""Table plans: parsing, interpolation, stage commands, reuse and skip / resume logic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from data_modules.datamodule import DeepfakeDataModule
from data_modules.datasets import SourceSpec
from data_modules.indexes.ffpp import DEFAULT_METHODS
from deepfakemae.branches import BRANCHES
from deepfakemae.cli import main
from deepfakemae.commands.demo_plan import PLAN as DEMO_PLAN
from deepfakemae.plans import (
    STAGES,
    TABLES_DIR,
    PlanError,
    flag_list,
    load_plan,
    locate,
    plan_jobs,
    run_plan,
)
from deepfakemae.runstate import write_done
from deepfakemae.synth.methods import DEMO_METHODS

TABLES = [f"table{i}" for i in range(1, 7)]
REPO = Path(__file__).resolve().parents[1]


def pending_stages(plan, run_root, **selection):
    """The stage runs ``run_plan`` would execute now, in order (``resume`` ones included)."""
    return [j for j in plan_jobs(plan, run_root, **selection) if j.status != "done"]


def _flag(job, name: str) -> str:
    """The value of ``--name=...`` in a job's argv (JSON values decoded)."""
    for arg in job.args:
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
            return json.loads(value) if value[:1] in "[{" else value
    raise AssertionError(f"--{name} not in {job.args}")


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _finish(stage_dir: Path) -> Path:
    """A stage folder as a finished run leaves it: a fit's last.ckpt and its done.json, or a
    test's complete results_test.json."""
    if stage_dir.name == "detector":
        stage_dir.mkdir(parents=True, exist_ok=True)
        (stage_dir / "results_test.json").write_text('{"celebdf": {"fused/auc": 0.5}}')
        return stage_dir
    _touch(stage_dir / "checkpoints/last.ckpt")
    write_done(stage_dir, {"global_step": 4, "checkpoint": "checkpoints/last.ckpt",
                           "checkpoint_bytes": 0})
    return stage_dir


@pytest.mark.parametrize("demo", [False, True])
@pytest.mark.parametrize("table", TABLES)
def test_every_plan_resolves(table, demo, monkeypatch, tmp_path):
    monkeypatch.setenv("CACHE_DIR", "/data/caches")
    monkeypatch.setenv("DEMO_CACHE", "/data/demo")
    plan = load_plan(TABLES_DIR / f"{table}.yaml", demo=demo)
    assert plan.name == table and plan.demo is demo
    assert "${" not in json.dumps(plan.resolved)  # every interpolation resolved
    jobs = plan_jobs(plan, tmp_path)
    assert jobs and all(j.status == "pending" for j in jobs)
    for job in jobs:
        assert job.args[0] == ("test" if job.stage == "detector" else "fit")
        configs = [job.args[i + 1] for i, a in enumerate(job.args) if a == "-c"]
        assert configs[0].endswith(f"experiments/{job.stage}.yaml")
        assert all(Path(c).exists() for c in configs)
        if demo:
            assert configs[1].endswith(f"experiments/demo/{job.stage}.yaml")
        caches = [s["cache"] for a in job.args
                  if a.split("=", 1)[0] in ("--data.init_args.train", "--data.init_args.val",
                                            "--data.init_args.test")
                  for s in json.loads(a.split("=", 1)[1])]
        assert all(c.startswith("/data/demo" if demo else "/data/caches/") for c in caches)


def test_table4_dry_run_commands(tmp_path, capsys):
    plan = load_plan(TABLES_DIR / "table4.yaml")
    todo = run_plan(plan, tmp_path, dry_run=True)
    by_key = {(j.table, j.variant, j.stage): j for j in todo}
    # ratio_50 is Table 1's run: reused, so it runs (once) in table1/main
    assert ("table4", "ratio_50", "pretrain") not in by_key
    assert {(t, v) for t, v, _ in by_key} == {("table4", "ratio_25"), ("table1", "main"),
                                               ("table4", "ratio_75")}
    assert _flag(by_key["table4", "ratio_25", "pretrain"], "model.init_args.mask_ratio") == "0.25"
    assert _flag(by_key["table4", "ratio_75", "pretrain"], "model.init_args.mask_ratio") == "0.75"
    out = capsys.readouterr().out
    w25 = ("WANDB_NAME=table4/ratio_25/pretrain WANDB_RUN_GROUP=table4/ratio_25 "
           "WANDB_JOB_TYPE=pretrain WANDB_TAGS=table4,ratio_25,pretrain")
    job = by_key["table4", "ratio_25", "pretrain"]
    provenance = (f"DEEPFAKEMAE_PLAN=table4 DEEPFAKEMAE_VARIANT=ratio_25 "
                  f"DEEPFAKEMAE_CONFIG_HASH={job.config_hash()} "
                  f"DEEPFAKEMAE_SETTINGS_HASH={job.settings_hash()}")
    assert (f"RUN_DIR={tmp_path}/table4/ratio_25 {w25} {provenance} deepfakemae fit -c "
            f"experiments/pretrain.yaml --model.init_args.mask_ratio=0.25") in out
    w75 = ("WANDB_NAME=table4/ratio_75/detector WANDB_RUN_GROUP=table4/ratio_75 "
           "WANDB_JOB_TYPE=detector WANDB_TAGS=table4,ratio_75,detector")
    assert f"RUN_DIR={tmp_path}/table4/ratio_75 {w75} DEEPFAKEMAE_PLAN=table4 " in out
    assert "deepfakemae test -c experiments/detector.yaml" in out
    assert "# table4: 12 of 12 stage runs pending" in out


def test_table2_protocol_and_shared_pretraining(tmp_path):
    plan = load_plan(TABLES_DIR / "table2.yaml")
    jobs = {(j.table, j.variant, j.stage): j for j in plan_jobs(plan, tmp_path)}
    pretrains = [k for k in jobs if k[2] == "pretrain"]
    assert pretrains == [("table1", "main", "pretrain")]  # one pretraining for all variants
    finetune = jobs["table2", "F2F", "finetune"]
    assert _flag(finetune, "model.init_args.mae_checkpoint") == \
        str(tmp_path / "table1/main/pretrain/checkpoints/last.ckpt")
    train = _flag(finetune, "data.init_args.train")
    assert [s["methods"] for s in train] == [["real", "Face2Face"]]
    assert _flag(finetune, "data.init_args.val")[0]["name"] == "ffpp"  # monitor val/ffpp/auc
    tests = _flag(jobs["table2", "F2F", "detector"], "data.init_args.test")
    assert [(s["name"], s["methods"], s["split"]) for s in tests] == [
        ("DF", ["real", "Deepfakes"], "test"), ("FS", ["real", "FaceSwap"], "test"),
        ("NT", ["real", "NeuralTextures"], "test")]
    # own checkpoints come from the configs' ${RUN_DIR} paths: no extra flag
    assert not any("finetune_checkpoint" in a for a in jobs["table2", "F2F", "detector"].args)


def test_table2_demo_plays_methods_with_demo_methods(tmp_path):
    plan = load_plan(TABLES_DIR / "table2.yaml", demo=True)
    jobs = {(j.table, j.variant, j.stage): j for j in plan_jobs(plan, tmp_path)}
    train = _flag(jobs["table2", "DF", "mapping"], "data.init_args.train")
    assert train[0]["methods"] == ["real", "FaceSwapWarp"]
    assert _flag(jobs["table2", "DF", "mapping"], "trainer.max_steps") == "20"
    names = [s["name"] for s in _flag(jobs["table2", "DF", "detector"], "data.init_args.test")]
    assert names == ["F2F", "FS", "NT"]


def test_table1_demo_trains_on_three_methods_tests_the_fourth(tmp_path):
    plan = load_plan(TABLES_DIR / "table1.yaml", demo=True)
    jobs = {j.stage: j for j in plan_jobs(plan, tmp_path)}
    assert _flag(jobs["finetune"], "data.init_args.train")[0]["methods"] == \
        ["real", "FaceSwapWarp", "LipsSwap", "EyesSwap"]
    assert [s["methods"] for s in _flag(jobs["detector"], "data.init_args.test")] == \
        [["real", "SelfBlend"]]


def test_table3_reuses_table2_networks(tmp_path):
    plan = load_plan(TABLES_DIR / "table3.yaml")
    detector = next(j for j in plan_jobs(plan, tmp_path) if j.table == "table3" and j.variant == "NT")
    assert _flag(detector, "model.init_args.mapping_checkpoint") == \
        str(tmp_path / "table2/NT/mapping/checkpoints/last.ckpt")
    assert [s["name"] for s in _flag(detector, "data.init_args.test")] == ["NT"]


def test_table6_wo_meta_and_branch_columns(tmp_path):
    plan = load_plan(TABLES_DIR / "table6.yaml")
    jobs = pending_stages(plan, tmp_path, variants=["wo_meta"])
    mine = [(j.table, j.variant, j.stage) for j in jobs]
    assert ("table6", "wo_meta", "mapping") in mine and ("table6", "wo_meta", "finetune") not in mine
    mapping = next(j for j in jobs if j.variant == "wo_meta" and j.stage == "mapping")
    assert _flag(mapping, "model.init_args.meta_learning") == "false"
    detector = next(j for j in jobs if j.variant == "wo_meta" and j.stage == "detector")
    assert _flag(detector, "model.init_args.finetune_checkpoint") == \
        str(tmp_path / "table1/main/finetune/checkpoints/last.ckpt")
    columns = plan.report["blocks"][0]["columns"]
    assert [c.get("metric") for c in columns] == ["F/auc", "M/auc", None, None, "M/auc", None,
                                                  None]


def test_table6_unmasked_target_retrains_only_the_mapping_network(tmp_path):
    plan = load_plan(TABLES_DIR / "table6.yaml")
    jobs = pending_stages(plan, tmp_path, variants=["unmasked_target"])
    mine = [(j.table, j.variant, j.stage) for j in jobs if j.table == "table6"]
    assert mine == [("table6", "unmasked_target", "mapping"),
                    ("table6", "unmasked_target", "detector")]
    mapping = next(j for j in jobs if j.variant == "unmasked_target" and j.stage == "mapping")
    assert _flag(mapping, "model.init_args.target") == "unmasked"
    assert not any(a.startswith("--model.init_args.mask_") for a in mapping.args)
    assert _flag(mapping, "model.init_args.mae_checkpoint") == \
        str(tmp_path / "table1/main/pretrain/checkpoints/last.ckpt")
    columns = {c["label"]: c for c in plan.report["blocks"][0]["columns"]}
    assert columns["M branch (unmasked target)"] == {
        "label": "M branch (unmasked target)", "variant": "unmasked_target", "metric": "M/auc"}


def test_table6_from_scratch_retrains_every_stage_without_mae_weights(tmp_path):
    plan = load_plan(TABLES_DIR / "table6.yaml")
    jobs = pending_stages(plan, tmp_path, variants=["from_scratch"])
    mine = [(j.variant, j.stage) for j in jobs if j.table == "table6"]
    assert mine == [("from_scratch", s) for s in ("pretrain", "finetune", "mapping", "detector")]
    pretrain = next(j for j in jobs if j.variant == "from_scratch" and j.stage == "pretrain")
    assert _flag(pretrain, "model.init_args.init_weights") in (None, "null", "None")
    main_pretrain = next(j for j in pending_stages(load_plan(TABLES_DIR / "table1.yaml"),
                                                   tmp_path, variants=["main"])
                         if j.stage == "pretrain")
    assert not any("init_weights" in a for a in main_pretrain.args)  # the config's MAE weights


def test_table5_strategies():
    plan = load_plan(TABLES_DIR / "table5.yaml")
    strategies = {v: s["pretrain"].args.get("model", {}).get("init_args", {}).get("mask_strategy")
                  for v, s in plan.variants.items()}
    assert strategies == {"RP": "random", "rp_matched": "random", "eyes": "eyes",
                          "cheek_nose": "cheek_nose", "lips": "lips", "RA": None}
    assert plan.variants["RA"]["pretrain"].reuse == "table1/main"


def test_skip_done_stage_and_fresh_reruns(tmp_path):
    plan = load_plan(TABLES_DIR / "table4.yaml")
    run = tmp_path / "table4" / "ratio_25"
    assert [j.stage for j in pending_stages(plan, tmp_path, variants=["ratio_25"])] == list(STAGES)
    _finish(run / "pretrain")
    _finish(run / "detector")
    pending = {j.stage: j for j in pending_stages(plan, tmp_path, variants=["ratio_25"])}
    # the detector's results cannot stand for branches that are still to be trained
    assert list(pending) == ["finetune", "mapping", "detector"]
    assert "its input table4/ratio_25 finetune runs again first" in pending["detector"].reason
    fresh = pending_stages(plan, tmp_path, variants=["ratio_25"], fresh=True)
    assert [j.stage for j in fresh] == list(STAGES)
    # stage filter: only the detector (its inputs must then exist or be produced)
    only = pending_stages(plan, tmp_path, variants=["ratio_25"], stages=["detector"], fresh=True)
    assert [(j.variant, j.stage) for j in only] == [("ratio_25", "detector")]


def test_interrupted_fit_resumes_from_last_checkpoint(tmp_path):
    plan = load_plan(TABLES_DIR / "table4.yaml")
    stage_dir = tmp_path / "table4" / "ratio_75" / "pretrain"
    ckpt = _touch(stage_dir / "checkpoints/last.ckpt")  # a checkpoint, but no done.json
    job = pending_stages(plan, tmp_path, variants=["ratio_75"])[0]
    assert (job.stage, job.status) == ("pretrain", "resume")
    assert str(ckpt) in job.reason
    assert job.args[-1] == "--ckpt_path=last"  # the same line starts and resumes a stage
    fresh = pending_stages(plan, tmp_path, variants=["ratio_75"], fresh=True)[0]
    assert fresh.status == "pending" and not any(a.startswith("--ckpt_path") for a in fresh.args)
    assert fresh.args[-1] == "--fresh"


def test_reused_table_work_is_kept_under_fresh(tmp_path):
    plan = load_plan(TABLES_DIR / "table6.yaml")
    for stage in ("pretrain", "finetune", "mapping", "detector"):
        _finish(tmp_path / f"table1/main/{stage}")
    pending = pending_stages(plan, tmp_path, fresh=True)
    assert [(j.table, j.variant, j.stage) for j in pending] == [
        ("table6", "wo_meta", "mapping"), ("table6", "wo_meta", "detector"),
        ("table6", "unmasked_target", "mapping"), ("table6", "unmasked_target", "detector"),
        *[("table6", "from_scratch", s) for s in ("pretrain", "finetune", "mapping", "detector")]]
    assert pending_stages(plan, tmp_path, variants=["fused"]) == []


def test_missing_input_fails_before_training(tmp_path):
    plan = load_plan(TABLES_DIR / "table1.yaml")
    with pytest.raises(PlanError, match="pretrain/checkpoints/last.ckpt"):
        run_plan(plan, tmp_path, stages=["finetune"])


def test_flag_list_nested_and_json():
    flags = flag_list({"model": {"init_args": {"mask_ratio": 0.25, "meta_learning": False}},
                       "data": {"init_args": {"test": [{"name": "DF"}]}}})
    assert flags == ["--model.init_args.mask_ratio=0.25", "--model.init_args.meta_learning=false",
                     '--data.init_args.test=[{"name": "DF"}]']


def test_plan_errors_name_the_file(tmp_path):
    bad = tmp_path / "table9.yaml"
    bad.write_text("name: table9\nvariants:\n  a: {pretrain: {}}\ndemo: {}\n")
    with pytest.raises(PlanError, match="table9.yaml.*variant 'a' must list the stages"):
        load_plan(bad)
    bad.write_text("name: table9\nvariants: {}\n")
    with pytest.raises(PlanError, match="add a `demo:` section"):
        load_plan(bad)


def test_run_command_dry_run(capsys, tmp_path):
    assert main(["run", "table6", "--dry-run", "--run-root", str(tmp_path),
                 "--variants", "wo_meta", "--stages", "mapping"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == "# table6: 1 of 1 stage runs pending"
    assert out[-1].startswith(f"RUN_DIR={tmp_path}/table6/wo_meta")
    assert "--model.init_args.meta_learning=false" in out[-1]
    assert main(["run", "table7", "--dry-run"]) == 2


def test_demo_and_paper_runs_never_share_a_folder(tmp_path):
    from deepfakemae.plans import PlanError, load_plan, write_plan_record

    write_plan_record(load_plan("table1", demo=True), tmp_path)
    with pytest.raises(PlanError, match="demo runs"):
        write_plan_record(load_plan("table1", demo=False), tmp_path)


def test_an_existing_input_of_the_wrong_stage_is_refused_before_training(tmp_path):
    from deepfakemae.modules.finetune import FinetuneModule

    plan = load_plan(TABLES_DIR / "table1.yaml", demo=True)
    ckpt = tmp_path / "table1/main/pretrain/checkpoints/last.ckpt"
    ckpt.parent.mkdir(parents=True)
    module = FinetuneModule(mae_checkpoint=None, preset="mae_vit_micro")
    saved = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(saved)
    torch.save(saved, ckpt)
    with pytest.raises(PlanError) as info:
        run_plan(plan, tmp_path, stages=["finetune"])
    message = str(info.value)
    assert str(ckpt) in message and "--stages pretrain --fresh" in message
    ckpt.write_bytes(b"")
    with pytest.raises(PlanError, match="empty file"):
        run_plan(plan, tmp_path, stages=["finetune"])
    assert not (tmp_path / "table1/main/finetune").exists()  # nothing ran


def _sources(job) -> list[str]:
    """A job's training / validation source flags (absent: the stage config's own)."""
    return [a for a in job.args if a.startswith(("--data.init_args.train=",
                                                 "--data.init_args.val="))]


@pytest.mark.parametrize("demo", [False, True])
def test_pseudo_fake_variants_switch_the_fake_source_and_reuse_stage1(tmp_path, demo):
    table1 = {(j.table, j.variant, j.stage): j
              for j in plan_jobs(load_plan(TABLES_DIR / "table1.yaml", demo=demo), tmp_path)}
    for variant, source in (("pseudo", "pseudo"), ("pseudo_both", "both")):
        assert ("table1", variant, "pretrain") not in table1  # stage 1 is main's
        for stage in ("finetune", "mapping"):
            job = table1["table1", variant, stage]
            assert _flag(job, "data.init_args.fake_source") == source
            assert _flag(job, "model.init_args.mae_checkpoint") == \
                str(tmp_path / "table1/main/pretrain/checkpoints/last.ckpt")
            assert _sources(job) == _sources(table1["table1", "main", stage])
    assert not any(a.startswith("--data.init_args.fake_source")
                   for a in table1["table1", "main", "finetune"].args)  # the paper's rows

    table2 = {(j.table, j.variant, j.stage): j
              for j in plan_jobs(load_plan(TABLES_DIR / "table2.yaml", demo=demo), tmp_path)}
    both = table2["table2", "DF_both", "mapping"]
    assert _flag(both, "data.init_args.fake_source") == "both"
    assert _sources(both) == _sources(table2["table2", "DF", "mapping"])
    assert _flag(both, "data.init_args.train")[0]["methods"][0] == "real"
    assert ("table2", "pseudo", "finetune") not in table2  # Table 1's pseudo-only networks
    detector = table2["table2", "pseudo", "detector"]
    assert _flag(detector, "model.init_args.finetune_checkpoint") == \
        str(tmp_path / "table1/pseudo/finetune/checkpoints/last.ckpt")
    assert [s["name"] for s in _flag(detector, "data.init_args.test")] == ["DF", "F2F", "FS", "NT"]


def _stage2_sources(job, split: str) -> list[dict]:
    """A stage-2 job's ``split`` sources: its flag, else the last of its configs that sets them."""
    for arg in job.args:
        if arg.startswith(f"--data.init_args.{split}="):
            return json.loads(arg.split("=", 1)[1])
    configs = [locate(job.args[i + 1]) for i, a in enumerate(job.args) if a == "-c"]
    found = None
    for path in configs:
        init = (yaml.safe_load(path.read_text()).get("data") or {}).get("init_args") or {}
        found = init.get(split, found)
    return found


PLANS = [*(TABLES_DIR / f"{t}.yaml" for t in TABLES), DEMO_PLAN]


@pytest.mark.parametrize("demo", [False, True])
@pytest.mark.parametrize("path", PLANS, ids=lambda p: p.stem)
def test_every_stage2_training_source_names_its_methods(path, demo, tmp_path):
    """A cache that also holds FaceShifter (or any other method) adds no training domain."""
    demo = demo or path == DEMO_PLAN
    allowed = {"real", *(DEMO_METHODS if demo else DEFAULT_METHODS)}
    jobs = [j for j in plan_jobs(load_plan(path, demo=demo), tmp_path) if j.stage in BRANCHES]
    assert jobs
    for job in jobs:
        for split in ("train", "val"):
            sources = _stage2_sources(job, split)
            assert sources, (job.table, job.variant, job.stage, split)
            for spec in sources:
                assert spec.get("methods"), (job.table, job.variant, job.stage, split, spec)
                assert "real" in spec["methods"] and set(spec["methods"]) <= allowed, spec


@pytest.mark.parametrize("stage", sorted(BRANCHES))
def test_paper_stage2_configs_do_not_train_on_faceshifter(stage, make_face_cache, tmp_path):
    vids = [{"key": f"ffpp/c23/{m}/{split}_{i:03d}", "label": int(m != "real"), "dataset": "ffpp",
             "method": m, "split": split, "frames": 2}
            for split in ("train", "val")
            for m in ("real", *DEFAULT_METHODS, "FaceShifter") for i in range(2)]
    root = make_face_cache(tmp_path / "cache", vids, size=32)
    init = yaml.safe_load((REPO / "experiments" / f"{stage}.yaml").read_text())["data"]["init_args"]
    specs = {split: [SourceSpec(**{**s, "cache": str(root)}) for s in init[split]]
             for split in ("train", "val")}
    dm = DeepfakeDataModule(**specs, test=None, img_size=32, batch_size=4)
    dm.setup("fit")
    assert {v.method for v in dm.train_dataset.videos} == {"real", *DEFAULT_METHODS}
    assert len(dm.train_dataset.videos) == 2 * 5
