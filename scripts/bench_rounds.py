"""scripts/bench.py's section "command vs peers, N rounds alternated": the command and each peer
at its best are timed in turn, round after round, in one invocation, so that a machine whose speed
drifts (a shared host: PyTorch's bf16 rate moved 474-932 img/s between runs on Zen 4) moves both
sides of a round's ratio alike. Each ratio is the median of the per-round ratios (command / the
peer's fastest setting in that round), reported with its min and max; the JSON keeps every round.

    python scripts/bench.py --only rounds --rounds 3 --json rounds.json

The peers at their best: Keras compile + fit over oneDNN on/off (the other setting in a fresh
process: TensorFlow fixes it at import), float32/mixed_bfloat16 and jit_compile/steps_per_execution;
PyTorch eager over float32/bf16 autocast and NCHW/channels_last (when torch is installed).
"""

from __future__ import annotations

import statistics

MODEL = {"depth": 20, "image_shape": [32, 32, 3], "batch_size": 128}  # ResNet-20, batch 128, as the command
KERAS_CONFIGS = ((False, 5), (True, 5))  # (jit_compile, steps_per_execution): bench.py's search
DROP_BELOW = 0.5  # round 1's settings under half their peer's best are not timed again (noise < 2x)


def best(figures: dict, prefix: str = "") -> tuple[str, float]:
    """(setting, img/s) of the fastest setting whose label starts with `prefix` ("float32": the
    float32 settings only)."""
    admitted = {s: v for s, v in figures.items() if s.startswith(prefix)}
    setting = max(admitted, key=admitted.get)
    return setting, admitted[setting]


def summarize(rounds: list, command: str, peer: str, prefix: str = "") -> dict:
    """The ratio command / peer over rounds of {"command": {label: img/s}, peer: {setting: img/s}}:
    in each round the peer at its fastest setting of that round; the median of the per-round
    ratios (not the ratio of medians), with their min and max."""
    per_round = []
    for figures in rounds:
        setting, rate = best(figures[peer], prefix)
        ours = figures["command"][command]
        per_round.append({"command": ours, "peer": rate, "setting": setting, "ratio": ours / rate})
    ratios = [r["ratio"] for r in per_round]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "rounds": per_round}


def kept(figures: dict, factor: float = DROP_BELOW) -> list:
    """The settings worth timing in later rounds: those within `factor` of round 1's best."""
    top = max(figures.values())
    return [s for s, v in figures.items() if v >= factor * top]


def keras_grid(onednn_on: bool) -> dict:
    """{label: settings} of Keras fit: oneDNN on and off, float32 and mixed_bfloat16, each config."""
    grid = {}
    for onednn in (onednn_on, not onednn_on):  # this process's setting first
        for precision in ("float32", "mixed_bfloat16"):
            for jit, spe in KERAS_CONFIGS:
                label = f"{precision} oneDNN {'on' if onednn else 'off'} jit={jit} spe={spe}"
                grid[label] = {"onednn": onednn, "precision": precision, "jit_compile": jit, "spe": spe}
    return grid


def torch_grid() -> dict:
    return {
        f"{dtype} {layout}": {"dtype": dtype, "channels_last": layout == "channels_last"}
        for dtype in ("float32", "bfloat16")
        for layout in ("NCHW", "channels_last")
    }


def keras_settings(settings: dict, windows: int, steps: int) -> dict:
    """{label: img/s} of Keras fit for each of `settings` in this process (with_onednn's child runs
    it for oneDNN's other setting)."""
    from benchmarks import keras_fit_throughput

    figures = {}
    for label, s in settings.items():
        r = keras_fit_throughput(
            MODEL["depth"],
            MODEL["image_shape"],
            MODEL["batch_size"],
            precision=s["precision"],
            jit_compile=s["jit_compile"],
            steps_per_execution=s["spe"],
            windows=windows,
            steps_per_window=max(steps, s["spe"]),
        )
        figures[label] = r["images_per_sec"]
    return figures


def keras_round(settings: dict, windows: int, steps: int) -> dict:
    from benchmarks import with_onednn

    from resnet_train.runtime import onednn

    here = {k: s for k, s in settings.items() if s["onednn"] == onednn.enabled()}
    other = {k: s for k, s in settings.items() if k not in here}
    figures = keras_settings(here, windows, steps)
    if other:  # all of oneDNN's other setting in one fresh process
        child = with_onednn(
            not onednn.enabled(), "bench_rounds.keras_settings", settings=other, windows=windows, steps=steps
        )
        figures.update({k: v for k, v in child.items() if k != "onednn"})
    return figures


def torch_round(settings: dict, windows: int, steps: int) -> dict:
    from torch_reference import throughput

    return {
        label: throughput(
            MODEL["depth"], MODEL["batch_size"], s["dtype"], windows, steps, channels_last=s["channels_last"]
        )["images_per_sec"]
        for label, s in settings.items()
    }


def torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def one_round(commands: dict, peers: dict, quick: bool) -> dict:
    """The command(s), then each peer over its settings: one round's img/s."""
    from benchmarks import cli_throughput

    windows, steps = (3, 4) if quick else (4, 6)
    epoch_steps = 30 if quick else 60
    figures = {"command": {}}
    for label, overrides in commands.items():
        args = (MODEL["depth"], MODEL["batch_size"], epoch_steps, 3, *overrides)
        figures["command"][label] = cli_throughput(*args)["images_per_sec"]
    if "keras fit" in peers:
        figures["keras fit"] = keras_round(peers["keras fit"], windows, steps)
    if "pytorch" in peers:
        figures["pytorch"] = torch_round(peers["pytorch"], windows, steps)
    return figures


def comparisons(auto: str, peers) -> list:
    """(command label, peer, settings prefix): the command as typed against each peer at its best;
    where `auto` is not float32, the command at float32 against each peer's float32 best too."""
    typed = f"as typed (auto={auto})"
    pairs = [(typed, peer, "") for peer in peers]
    if auto != "float32":
        pairs += [("float32", peer, "float32") for peer in peers]
    return pairs


def run_rounds(n: int, quick: bool, auto: str, say=print) -> dict:
    """The section: n rounds alternated, a line per round, then the ratio table. Returns the JSON."""
    from resnet_train.runtime import onednn

    commands = {f"as typed (auto={auto})": ()}
    if auto != "float32":
        commands["float32"] = ("runtime.precision=float32",)
    peers = {"keras fit": keras_grid(onednn.enabled())}
    if torch_installed():
        peers["pytorch"] = torch_grid()
    note = "" if "pytorch" in peers else "; pytorch not installed: no PyTorch rows (pip install torch==2.13.0)"
    say(f"command vs peers, {n} rounds alternated (ResNet-20, batch 128){note}")
    rounds, dropped = [], {}
    for i in range(n):
        figures = one_round(commands, peers, quick)
        rounds.append(figures)
        say(f"  round {i + 1}: " + "; ".join(_round_line(figures, name) for name in figures))
        if i == 0:  # settings far behind in round 1 cannot be a peer's best later
            for name in peers:
                keep = kept(figures[name])
                dropped[name] = [s for s in peers[name] if s not in keep]
                peers[name] = {s: peers[name][s] for s in keep}
    ratios = {}
    for command, peer, prefix in comparisons(auto, peers):
        key = f"{command} / {peer}" + (" float32" if prefix else "")
        ratios[key] = summary = summarize(rounds, command, peer, prefix)
        say(_ratio_line(key, summary))
    for name, settings in dropped.items():
        if settings:
            say(f"  not timed after round 1 (under {DROP_BELOW}x {name}'s best): {', '.join(settings)}")
    return {"rounds": rounds, "ratios": ratios, "dropped_after_round_1": dropped, "pytorch": "pytorch" in peers}


def _round_line(figures: dict, name: str) -> str:
    if name == "command":
        return ", ".join(f"command {label} {v:.0f}" for label, v in figures[name].items())
    setting, rate = best(figures[name])
    return f"{name} best {rate:.0f} ({setting})"


def _ratio_line(key: str, summary: dict) -> str:
    ours = " / ".join(f"{r['command']:.0f}" for r in summary["rounds"])
    peer = " / ".join(f"{r['peer']:.0f}" for r in summary["rounds"])
    spread = f"({summary['min']:.2f}..{summary['max']:.2f})"
    return f"{key:<46} {summary['median']:.2f}x median {spread:<13} img/s command {ours}; peer {peer}"
