class UsageError(Exception):
    """Bad input: reported as one `error:` line and exit code 2, without a traceback."""


class Diverged(Exception):
    """A loss, value, return or weight that is no longer finite: one `error:` line and exit code 3."""


RANGES = {"positive": lambda v: v > 0, "0 or more": lambda v: v >= 0,
          "in (0, 1]": lambda v: 0 < v <= 1, "in [0, 1]": lambda v: 0 <= v <= 1}


def check_flags(args, ranges: dict[str, tuple[str, ...]]) -> None:
    """--seed's range, every float finite (nan and inf pass any comparison), each flag `ranges` names
    within its range, and a file behind --resume and --evaluate."""
    if not 0 <= args.seed < 2**31:  # numpy and the envs take seeds up to 2**32 - 1, offsets added
        raise UsageError(f"--seed must be from 0 to 2**31 - 1, got {args.seed}")
    checks = [(name, "a finite number", math.isfinite) for name, v in vars(args).items() if isinstance(v, float)]
    for name, want, ok in checks + [(name, kind, RANGES[kind]) for kind, names in ranges.items() for name in names]:
        if not ok(getattr(args, name)):
            raise UsageError(f"--{name.replace('_', '-')} must be {want}, got {getattr(args, name)}")
    for name in ("resume", "evaluate"):
        if getattr(args, name) is not None and not Path(getattr(args, name)).is_file():
            raise UsageError(f"--{name}: no file at {getattr(args, name)}")
    if args.evaluate and args.eval_episodes == 0:
        raise UsageError("--eval-episodes must be positive with --evaluate")


def check_env(env_id: str, env_kwargs: dict | None = None) -> None:
    """Makes the env once, so that an unknown id (gymnasium suggests near ones), a missing package or
    module, a keyword the env does not take, or spaces this file cannot use are one error line before
    anything is written."""
    try:
        env = make_env(env_id, env_kwargs)
    except (gym.error.Error, ImportError, TypeError) as e:
        raise UsageError(f"cannot make {env_id}" + (f" with --env-kwargs {env_kwargs}" if env_kwargs else "")
                         + f": {e}") from None
    space, problem = env.observation_space, action_space_error(env.action_space)  # as make_env flattened it
    env.close()
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise UsageError(f"{env_id} has {space} observations; {ALGORITHM}.py's networks take a flat vector (a 1-D "
                         "Box, or a Discrete, MultiDiscrete, Tuple or Dict space, which it flattens); image "
                         "observations need a convolutional network, which it does not have")
    if problem:
        raise UsageError(f"{env_id} {problem}")
