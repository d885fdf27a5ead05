"""The plan of `nami ablate`: arms (a config file plus overrides), seeds, the training budget, and for every
arm x seed the overrides that make it an ordinary run directory under DIR/runs/.

Everything here is checked before any compute: each arm's config loads and validates, its data shards resolve,
arm names are distinct, and keys that `nami ablate` sets itself are not set by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError, NamiConfig, load, to_dict
from ..flow import StageMix

# Keys `nami ablate` sets per arm and seed; setting them by hand would break the pairing or the budget.
OWNED_KEYS = {
    "seed": "--seeds",
    "trainer.default_root_dir": "--out",
    "trainer.resume": "nothing (an interrupted arm resumes by itself)",
    "trainer.run_dir_exists": "nothing (each arm x seed has its own run directory under --out)",
    "trainer.max_steps": "--steps",
    "trainer.max_time": "--minutes",
    "eval.seed": "nothing (every arm is scored on the same prompts and noise)",
    "eval.per_category": "--eval-num",
    # each arm is scored after training; scoring during it would spend the arms' budgets unequally (uniform
    # sampling is slower) and add to their measured training time
    "eval.every_n_steps": "nothing (each arm is scored once, after training)",
}
# For seed s every arm is scored with eval seed E + s * EVAL_SEED_STRIDE (E: the reference arm's eval.seed):
# the same prompts and the same noise across arms (paired), a fresh prompt set per seed (so the spread over
# seeds includes the choice of prompts). The stride keeps the noise seeds E + i of two seeds apart.
EVAL_SEED_STRIDE = 1_000_000
ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Keys that may differ between two invocations without changing what a finished arm x seed measured.
NOT_COMPARED = ("trainer.default_root_dir", "trainer.resume")


@dataclass(frozen=True)
class Budget:
    """The same training budget for every arm: optimizer steps, or minutes of wall time (recorded)."""

    steps: int | None = None
    minutes: float | None = None

    def describe(self) -> str:
        if self.minutes is not None:
            return f"{self.minutes:g} minutes of training wall time each"
        return f"{self.steps} training steps each"

    def overrides(self, cfg: NamiConfig) -> list[str]:
        if self.minutes is not None:
            seconds = round(self.minutes * 60)
            return [f"trainer.max_time=00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"]
        out = [f"trainer.max_steps={self.steps}"]
        mix = StageMix.from_config(cfg.flow)
        if mix.phases and self.steps != cfg.trainer.max_steps:
            out.append(scaled_ratio_schedule(cfg, self.steps))
        return out


def scaled_ratio_schedule(cfg: NamiConfig, steps: int) -> str:
    """The override that moves a ratio schedule's phase starts to the same fractions of a different step budget.

    sequential_training's phases start at 700 and 1400 of 1700 steps; under a 300-step budget unscaled phases
    would never reach stages 1 and 2, and the arm would measure something else than it says."""
    mix = StageMix.from_config(cfg.flow).rescaled(steps / cfg.trainer.max_steps)
    phases = ", ".join(f"{{start_step: {start}, ratios: [{', '.join(f'{r:g}' for r in ratios)}]}}"
                       for start, ratios in mix.phases)  # fmt: skip
    return f"flow.ratio_schedule=[{phases}]"


@dataclass
class Arm:
    """One compared configuration: a config file plus its own overrides (after the common ones)."""

    name: str
    config: Path
    overrides: list[str]
    needs_bridge_fit: bool = False


@dataclass
class ArmSeed:
    """One arm trained with one seed: an ordinary run directory, DIR/runs/<arm>-seed<s>."""

    arm: Arm
    seed: int
    overrides: list[str]  # everything after the config file: common, the arm's own, then the plan's
    cfg: NamiConfig

    @property
    def id(self) -> str:
        return f"{self.arm.name}-seed{self.seed}"

    def spec(self) -> dict:
        """What this arm x seed is: a finished one is reused only if its spec is the same."""
        resolved = _flat(to_dict(self.cfg))
        return {
            "arm": self.arm.name,
            "seed": self.seed,
            "config": str(self.arm.config),
            "overrides": self.overrides,
            "fit_bridges": self.arm.needs_bridge_fit,
            "resolved": {k: v for k, v in resolved.items() if k not in NOT_COMPARED},
        }


@dataclass
class Plan:
    out: Path
    arms: list[Arm]
    seeds: list[int]
    budget: Budget
    reference: str
    jobs: int = 1
    bench_repeats: int = 3
    common_overrides: list[str] = field(default_factory=list)
    runs: list[ArmSeed] = field(default_factory=list)  # seed-major: every arm of seed 0, then of seed 1, ...

    def run(self, arm: str, seed: int) -> ArmSeed:
        return next(r for r in self.runs if r.arm.name == arm and r.seed == seed)

    def describe(self) -> dict:
        return {
            "arms": [{"name": a.name, "config": str(a.config), "overrides": a.overrides} for a in self.arms],
            "seeds": self.seeds,
            "budget": {"steps": self.budget.steps, "minutes": self.budget.minutes},
            "reference": self.reference,
            "common_overrides": self.common_overrides,
            "bench_repeats": self.bench_repeats,
        }


def _flat(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out: dict = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _check_not_owned(overrides: list[str], where: str, allow_name: bool) -> None:
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in OWNED_KEYS:
            raise ConfigError(key, f"is set by nami ablate per arm and seed ({where}); use {OWNED_KEYS[key]}")
        if key == "name" and not allow_name:
            raise ConfigError("name", "names one arm: put it after that arm's config (--arm CONFIG name=...)")


def _check_data(cfg: NamiConfig) -> None:
    from data_modules import resolve_data

    resolve_data(cfg.data)


def make_arms(configs: list[str], arm_groups: list[list[str]], common: list[str]) -> list[Arm]:
    """Arms from plain CONFIG arguments, then from `--arm CONFIG key=value ...` groups, in that order."""
    from ..bridges import bridge_from_config

    _check_not_owned(common, "a common override", allow_name=False)
    specs = [(c, []) for c in configs] + [(g[0], g[1:]) for g in arm_groups]
    if not specs:
        raise ConfigError("CONFIG", "nami ablate needs at least one arm (a config file)")
    arms: list[Arm] = []
    for config, own in specs:
        if "=" in config:
            raise ConfigError(config, "an --arm group starts with its config file, then key=value overrides")
        _check_not_owned(own, f"an override of {config}", allow_name=True)
        cfg = load(config, [*common, *own])
        if not ARM_NAME.match(cfg.name):
            raise ConfigError("name", f"{cfg.name!r} cannot name a run directory (letters, digits, _ . -)")
        twin = next((a for a in arms if a.name == cfg.name), None)
        if twin is not None:
            raise ConfigError("name", f"two arms are called {cfg.name} ({twin.config} and {config}); "
                                      f"name one with --arm {config} name=OTHER")  # fmt: skip
        _check_data(cfg)
        arms.append(Arm(cfg.name, Path(config).resolve(), own, bridge_from_config(cfg).learnable))
    return arms


def build_plan(out: str | Path, arms: list[Arm], seeds: list[int], budget: Budget, common: list[str],
               reference: str | None = None, jobs: int = 1, bench_repeats: int = 3,
               eval_num: int | None = None) -> Plan:  # fmt: skip
    """Every arm x seed's overrides, loaded and validated; one ConfigError naming the key on bad input."""
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ConfigError("--seeds", f"needs distinct seeds >= 0, got {seeds}")
    if budget.minutes is not None and jobs > 1:
        raise ConfigError("--jobs", "a wall-clock budget (--minutes) needs --jobs 1: arms sharing the CPU "
                                    "would get less training in the same minutes")  # fmt: skip
    names = [a.name for a in arms]
    reference = reference or names[0]
    if reference not in names:
        raise ConfigError("--reference", f"{reference} is not one of the arms ({', '.join(names)})")
    out = Path(out).resolve()
    base = {a.name: load(a.config, [*common, *a.overrides]) for a in arms}
    ref = base[reference]
    if budget.steps is None and budget.minutes is None:
        steps = {name: cfg.trainer.max_steps for name, cfg in base.items()}
        if len(set(steps.values())) > 1:
            listed = ", ".join(f"{n} {s}" for n, s in steps.items())
            raise ConfigError("trainer.max_steps", f"differs between arms ({listed}); give --steps N")
        budget = Budget(steps=ref.trainer.max_steps)
    if eval_num and ref.eval.prompt_set == "large":
        raise ConfigError("eval.prompt_set", "large is a fixed 200 prompts per category; drop --eval-num")
    per_category = eval_num or ref.eval.per_category
    plan = Plan(out, arms, list(seeds), budget, reference, jobs, bench_repeats, list(common))
    for seed in seeds:
        for arm in arms:
            own = [
                f"name={arm.name}-seed{seed}", f"seed={seed}", f"trainer.default_root_dir={out / 'runs'}",
                f"eval.seed={ref.eval.seed + EVAL_SEED_STRIDE * seed}", f"eval.per_category={per_category}",
                f"eval.prompt_set={ref.eval.prompt_set}", "eval.every_n_steps=0", *budget.overrides(base[arm.name]),
            ]  # fmt: skip
            overrides = [*common, *arm.overrides, *own]
            plan.runs.append(ArmSeed(arm, seed, overrides, load(arm.config, overrides)))
    return plan
