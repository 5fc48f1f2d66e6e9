"""Case-insensitive component registry shared by [`OPTIMIZERS`][danling.optim.OPTIMIZERS] and
[`SCHEDULERS`][danling.optim.SCHEDULERS]."""

from __future__ import annotations

import inspect
from difflib import get_close_matches
from typing import Any, Callable, Mapping

from chanfig import Registry as ChanfigRegistry

__all__ = ["Registry", "UnexpectedArgumentError", "UnknownComponentError", "check_arguments"]

_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class UnknownComponentError(KeyError, ValueError):
    """Raised when a registry is asked for a name it does not hold.

    It is both a [`KeyError`][KeyError] (a failed lookup) and a [`ValueError`][ValueError] (a bad config value, which
    is what [`chanfig.Registry`][chanfig.Registry] raises), so either ``except`` clause catches it.
    """

    def __str__(self) -> str:
        # KeyError would print the repr of the message, quotes included.
        return str(self.args[0]) if self.args else ""


class UnexpectedArgumentError(TypeError):
    """Raised before a component is built when it is given keyword arguments it does not accept.

    A config key such as ``--sched.warmup 5`` ends up as a keyword argument of the component; this error names the
    unexpected keys, the component (and its registry name when built through a registry), the accepted parameters
    and, for each unexpected key, the closest accepted name. It is a [`TypeError`][TypeError], which is what Python
    raises for an unexpected keyword argument.

    Attributes:
        component: The component that was to be built.
        unexpected: The keyword names it does not accept, in the order given.
        accepted: The keyword names it accepts, in signature order.
        registered_as: How the component was asked for, e.g. ``scheduler 'cosine'``; `None` outside a registry.
    """

    def __init__(self, component: Any, unexpected: list[str], accepted: list[str]) -> None:
        super().__init__(component, unexpected, accepted)
        self.component = component
        self.unexpected = unexpected
        self.accepted = accepted
        self.registered_as: str | None = None

    def __str__(self) -> str:
        name = _component_name(self.component)
        if self.registered_as is not None:
            name = f"{name} ({self.registered_as})"
        plural = "s" if len(self.unexpected) > 1 else ""
        message = f"{name} got unexpected argument{plural} {', '.join(map(repr, self.unexpected))}."
        suggestions = self.suggestions()
        if len(self.unexpected) == 1 and suggestions:
            message += f" Did you mean {suggestions[self.unexpected[0]]!r}?"
        elif suggestions:
            message += f" Did you mean: {', '.join(f'{key!r} -> {match!r}' for key, match in suggestions.items())}?"
        return f"{message} It accepts: {', '.join(self.accepted)}."

    def suggestions(self) -> dict[str, str]:
        """Map each unexpected key that resembles an accepted name to the closest one.

        Returns:
            Unexpected key -> closest accepted name, for the keys that have a close match.
        """
        found = {}
        for key in self.unexpected:
            matches = get_close_matches(key, self.accepted, n=1, cutoff=0.6)
            if matches:
                found[key] = matches[0]
        return found


def check_arguments(component: Callable, args: tuple = (), kwargs: Mapping[str, Any] | None = None) -> None:
    """Check that `component` accepts every keyword in `kwargs`, without calling it.

    The check reads ``inspect.signature(component)``; it is skipped when the component takes ``**kwargs`` or
    has no signature to read, and it leaves every other mistake (a missing argument, a bad value) to the component.

    Args:
        component: The class or function to be called.
        args: Positional arguments it will be given (not checked; accepted for symmetry with the call).
        kwargs: Keyword arguments it will be given.

    Raises:
        UnexpectedArgumentError: If some keyword names no parameter that can be passed by keyword.

    Examples:
        >>> def scale(x, factor=2):
        ...     return x * factor
        >>> check_arguments(scale, (1,), {"factor": 3})
        >>> try:
        ...     check_arguments(scale, (1,), {"factr": 3})
        ... except TypeError as error:
        ...     print(error)
        scale got unexpected argument 'factr'. Did you mean 'factor'? It accepts: x, factor.
    """
    if not kwargs:
        return
    try:
        parameters = inspect.signature(component).parameters.values()
    except (TypeError, ValueError):  # builtins and some C extensions have no signature to read
        return
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return
    accepted = [parameter.name for parameter in parameters if parameter.kind in _KEYWORD_KINDS]
    unexpected = [key for key in kwargs if key not in accepted]
    if unexpected:
        raise UnexpectedArgumentError(component, unexpected, accepted)


class Registry(ChanfigRegistry):
    """A [`chanfig.Registry`][chanfig.Registry] whose names are case-insensitive.

    Names are lower-cased when registered and when looked up, whatever the installed chanfig version does by
    default. [`build`][chanfig.Registry.build] passes every keyword to the component as is, so a misspelt config
    key fails loudly instead of being dropped, as some chanfig versions do: before the component is called, its
    signature is checked (see [`check_arguments`][danling.optim._registry.check_arguments]) and an unknown key raises
    [`UnexpectedArgumentError`][danling.optim._registry.UnexpectedArgumentError] naming the key, the component, its
    parameters and the closest one. Looking up an unregistered name raises
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
        >>> _ = registry.register(lambda size=1: [0] * size, "zeros")
        >>> try:
        ...     registry.build(type="zeros", sise=3)
        ... except TypeError as error:
        ...     print(error)
        <lambda> (component 'zeros') got unexpected argument 'sise'. Did you mean 'size'? It accepts: size.
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

    def build(self, *args: Any, **kwargs: Any) -> Any:
        """Build a component from a name (the ``type`` key) and its arguments, as [`chanfig.Registry.build`][].

        Args:
            *args: A config mapping holding ``type``, or positional arguments of the component.
            **kwargs: ``type`` and keyword arguments of the component.

        Returns:
            The built component.

        Raises:
            UnknownComponentError: If the name is not registered.
            UnexpectedArgumentError: If the component does not accept some keyword; the message gives the name it was
                registered under.
        """
        try:
            return super().build(*args, **kwargs)
        except UnexpectedArgumentError as error:
            names = [str(name) for name, component in self.items() if component is error.component]
            if error.registered_as is None and names:
                error.registered_as = f"{type(self).kind} {' / '.join(names)!r}"
            raise

    @staticmethod
    def init(cls: Callable, *args: Any, **kwargs: Any) -> Any:
        """Construct `cls` with the given arguments, after checking that it accepts every keyword.

        Args:
            cls: The component to construct.
            *args: Positional arguments.
            **kwargs: Keyword arguments, all forwarded.

        Returns:
            The constructed component.

        Raises:
            UnexpectedArgumentError: If `cls` does not accept some keyword; it is raised before `cls` is called, so
                errors raised by `cls` itself reach the caller unchanged.
        """
        check_arguments(cls, args, kwargs)
        return cls(*args, **kwargs)

    def names(self) -> list[str]:
        """Return the registered names, sorted.

        Returns:
            The sorted list of names.
        """
        return sorted(str(key) for key in self.keys())


def _normalize(name: Any) -> Any:
    return name.lower() if isinstance(name, str) else name


def _component_name(component: Any) -> str:
    func = getattr(component, "func", None)  # functools.partial
    target = component if func is None else func
    return str(getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(target))
