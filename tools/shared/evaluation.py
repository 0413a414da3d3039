def eval_seed(seed: int) -> int:
    """Evaluation episode i is seeded seed + 10_000 + i, apart from the training envs' first reset (seed
    + env index), and alike at the end of training and for --evaluate later, which therefore agree."""
    return seed + 10_000


def evaluation_env(env_id: str, env_kwargs: dict, video_dir: Path | None) -> gym.Env:
    """The evaluation env; with video_dir, recording every episode there. A video never takes a run down:
    an env that cannot render frames here is evaluated without it, and one line says why."""
    env = make_env(env_id, env_kwargs)
    if video_dir is None:
        return env
    env.close()
    reason = "it has no rgb_array render mode"
    if "rgb_array" in env.metadata.get("render_modes", []):
        if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
            os.environ.setdefault("MUJOCO_GL", "egl")  # MuJoCo renders off-screen through EGL, without a display
        env = make_env(env_id, env_kwargs, render_mode="rgb_array")
        try:
            env.reset()
            env.render()  # the first frame: where a missing display or GL library shows, before any episode
            return gym.wrappers.RecordVideo(env, str(video_dir), episode_trigger=lambda _: True, name_prefix="eval")
        except Exception as e:  # noqa: BLE001 (renderers fail in many ways: no display, no GL library, no package)
            env.close()
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    print(f"video skipped: {env_id} cannot render frames here ({reason}); evaluating without video", flush=True)
    return make_env(env_id, env_kwargs)
