"""Case-insensitive component registry shared by [`OPTIMIZERS`][danling.optim.OPTIMIZERS] and
[`SCHEDULERS`][danling.optim.SCHEDULERS]."""

from __future__ import annotations

from typing import Any, Callable

from chanfig import Registry as ChanfigRegistry

__all__ = ["Registry", "UnknownComponentError"]


class UnknownComponentError(KeyError, ValueError):
    """Raised when a registry is asked for a name it does not hold.

    It is both a [`KeyError`][KeyError] (a failed lookup) and a [`ValueError`][ValueError] (a bad config value, which
    is what [`chanfig.Registry`][chanfig.Registry] raises), so either ``except`` clause catches it.
    """

    def __str__(self) -> str:
        # KeyError would print the repr of the message, quotes included.
        return str(self.args[0]) if self.args else ""


class Registry(ChanfigRegistry):
    """A [`chanfig.Registry`][chanfig.Registry] whose names are case-insensitive.

    Names are lower-cased when registered and when looked up, whatever the installed chanfig version does by
    default. [`build`][chanfig.Registry.build] passes every keyword to the component as is, so a misspelt config
    key fails loudly instead of being dropped, as some chanfig versions do. Looking up an unregistered name raises
    [`UnknownComponentError`][danling.optim._registry.UnknownComponentError] listing the registered names.

    Examples:
        >>> registry = Registry()
        >>> _ = registry.register(dict, "MyDict")
        >>> registry.lookup("MYDICT") is dict
        True
        >>> registry.build(type="mydict", a=1)
        {'a': 1}
        >>> try:
        ...     registry.lookup("list")
        ... except KeyError as error:
        ...     print(error)
        Unknown component 'list'; expected one of ['mydict']
    """

    kind = "component"

    def set(self, name: Any, component: Any) -> None:  # type: ignore[override]
        """Register `component` under the lower-cased `name`.

        Args:
            name: Name of the component.
            component: The component.
        """
        super().set(_normalize(name), component)

    def lookup(self, name: Any, default: Any = None) -> Any:  # type: ignore[override]
        """Return the component registered under `name`, ignoring case.

        Args:
            name: Name of the component.
            default: Returned when `name` is not registered; by default an error is raised instead.

        Returns:
            The registered component.

        Raises:
            UnknownComponentError: If `name` is not registered and no `default` is given.
        """
        key = _normalize(name)
        if key in self:
            return self.get(key)
        if default is not None:
            return default
        raise UnknownComponentError(f"Unknown {type(self).kind} {name!r}; expected one of {self.names()}")

    @staticmethod
    def init(cls: Callable, *args: Any, **kwargs: Any) -> Any:
        """Construct `cls` with the given arguments.

        Args:
            cls: The component to construct.
            *args: Positional arguments.
            **kwargs: Keyword arguments, all forwarded.

        Returns:
            The constructed component.
        """
        return cls(*args, **kwargs)

    def names(self) -> list[str]:
        """Return the registered names, sorted.

        Returns:
            The sorted list of names.
        """
        return sorted(str(key) for key in self.keys())


def _normalize(name: Any) -> Any:
    return name.lower() if isinstance(name, str) else name
