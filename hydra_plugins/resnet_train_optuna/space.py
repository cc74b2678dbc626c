"""hydra.sweeper.params (and `key=sweep` command-line overrides) -> Optuna distributions, read by
Hydra's own override parser, as hydra-optuna-sweeper read them:

  interval(a, b)             FloatDistribution (IntDistribution when both ends are integers)
  tag(log, interval(a, b))   the same on a log scale
  range(a, b[, step])        IntDistribution a..b in steps (b included, as the former plugin had it;
                             FloatDistribution with a step for floats)
  choice(x, y, ...)          CategoricalDistribution
  key=value                  a fixed setting, passed to every trial unchanged
"""

from __future__ import annotations

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer


def search_space(params, arguments) -> tuple[dict, dict]:
    """(name -> distribution, name -> fixed value) from the config's params then the command's."""
    entries = [f"{key}={value}" for key, value in (params or {}).items()] + list(arguments)
    distributions, fixed = {}, {}
    for override in OverridesParser.create().parse_overrides(entries):
        name = override.get_key_element()
        if override.is_sweep_override():
            distributions[name] = distribution(override)
            fixed.pop(name, None)
        else:
            fixed[name] = override.get_value_element_as_str()
            distributions.pop(name, None)
    return distributions, fixed


def distribution(override: Override):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            return FloatDistribution(value.start, value.stop, step=value.step)
        return IntDistribution(int(value.start), int(value.stop), step=int(value.step))
    if override.is_interval_sweep():
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ValueError(f"{override.input_line}: not a search space Optuna can sample (interval, range, choice)")


def grid(distributions: dict) -> dict:
    """GridSampler's search space: every value of each (discrete) distribution."""
    from optuna.distributions import CategoricalDistribution

    space = {}
    for name, d in distributions.items():
        if isinstance(d, CategoricalDistribution):
            space[name] = list(d.choices)
        elif getattr(d, "step", None) is not None and not getattr(d, "log", False):
            count = int(round((d.high - d.low) / d.step)) + 1
            space[name] = [d.low + i * d.step for i in range(count)]
        else:
            raise ValueError(f"{name}: the grid sampler needs choice() or range(), not an interval")
    return space
