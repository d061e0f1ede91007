import sys, time, tempfile, torch
from pathlib import Path
sys.path.insert(0, "/work/main")
from bench.cohorts import build_data
from bench.common import budget
from models.augment import AugmentConfig
from models.config import ModelConfig
from models.data import PreprocessConfig, load_tensors, make_demo_counterfactuals
from models.fitting import fit_learning_subjects, learned_spread
from models.shared_model import class_view, fit_shared_model
torch.set_num_threads(1)
pre = PreprocessConfig()
for seed in [int(a) for a in sys.argv[1:]]:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = build_data(seed, Path(tmp), 60, 6 + 30, 20, pre, difficulty=0.6)
        truth = load_tensors(make_demo_counterfactuals(Path(tmp) / "t", range(60), seed=seed, difficulty=0.6), pre, Path(tmp) / "ct", "AD")
    x_cn, x_ad = data["train_CN"], data["train_AD"][:6]
    config = budget(AugmentConfig(), False)
    model_cfg = ModelConfig(data_shape=(1, *pre.target_shape), **config.model.model_dump())
    scans = {"CN": x_cn, "AD": x_ad}
    shared, retrained, _ = fit_learning_subjects(
        lambda s, _: fit_shared_model(scans, model_cfg, config, s),
        lambda fitted: {"AD": learned_spread(class_view(fitted, "AD"), x_ad)}, config.retrains, seed * 1009,
        lambda *_: None)
    torch.save({"shared": shared, "data": data, "truth": truth}, f"/tmp/x/cache/seed{seed}.pt")
    print(f"seed {seed}: {time.perf_counter() - t0:.0f} s, {retrained} retrains", flush=True)
