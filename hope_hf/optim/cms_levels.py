"""Find the Continuum Memory System levels of a model and the parameters of each."""

from dataclasses import dataclass, field

from torch import nn


@dataclass
class CMSLevel:
    """One level of one CMS module: its parameters and its update period (None = frozen)."""

    name: str  # "<module path>:<level index>", e.g. "model.layers.3.cms:1"
    index: int  # position in the module's level list
    period: int | None
    variant: str
    params: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    child: "CMSLevel | None" = None  # nested variant: the next level, reset at this level's pulse


def is_cms_module(module: nn.Module) -> bool:
    """Duck-typed, so remote-code copies of the model classes are recognised too."""
    return hasattr(module, "level_parameters") and hasattr(module, "update_periods")


def check_period(period, where: str):
    if period is not None and (isinstance(period, bool) or not isinstance(period, int) or period < 1):
        raise ValueError(f"period of {where} must be an int >= 1 or None (frozen), got {period!r}")
    return period


def find_cms_levels(model: nn.Module, periods=None) -> list[CMSLevel]:
    """Every (CMS module, level) of ``model`` with its period.

    periods: None (the periods in each module, i.e. the config's ``update_period``), a list
    with one period per level index (levels of the same index across layers share it), or a
    dict whose int keys are level indices and whose str keys name one level
    (``"model.layers.3.cms:1"``: level 1 of that module); None as a period freezes a level.
    """
    modules = [(name, m) for name, m in model.named_modules() if is_cms_module(m)]
    if not modules:
        raise ValueError(f"{type(model).__name__} has no Continuum Memory System module")
    num_levels = max(len(m.update_periods) for _, m in modules)
    if periods is None:
        periods = {}
    elif isinstance(periods, (list, tuple)):
        if len(periods) != num_levels:
            raise ValueError(f"periods as a list needs one entry per level index ({num_levels}), got {len(periods)}")
        periods = dict(enumerate(periods))
    elif not isinstance(periods, dict):
        raise TypeError(f"periods must be None, a list or a dict, got {type(periods).__name__}")

    level_names = {f"{name}:{i}" for name, m in modules for i in range(len(m.update_periods))}
    for key, period in periods.items():
        if isinstance(key, int) and not 0 <= key < num_levels:
            raise ValueError(f"periods names level index {key}, but the model's levels are 0..{num_levels - 1}")
        if isinstance(key, str) and key not in level_names:
            raise ValueError(f"periods names level {key!r}, which does not exist (e.g. {sorted(level_names)[0]!r})")
        check_period(period, f"level {key!r}")

    param_names = {id(p): n for n, p in model.named_parameters()}
    levels = []
    for module_name, module in modules:
        module_levels = []
        for i, level_params in enumerate(module.level_parameters()):
            name = f"{module_name}:{i}"
            period = periods.get(name, periods.get(i, module.update_periods[i]))
            level = CMSLevel(name, i, check_period(period, name), module.variant)
            level.params = [(param_names[id(p)], p) for p in level_params if p.requires_grad]
            module_levels.append(level)
        if module.variant == "nested":
            for parent, child in zip(module_levels, module_levels[1:]):
                if parent.period is not None and child.period is not None and parent.period < child.period:
                    raise ValueError(
                        f"nested CMS: level {parent.name} (period {parent.period}) resets {child.name} "
                        f"(period {child.period}), so it must not be faster than it"
                    )
                parent.child = child
        levels.extend(module_levels)
    return levels


def level_periods(levels: list[CMSLevel]) -> dict[str, int | None]:
    return {level.name: level.period for level in levels}
