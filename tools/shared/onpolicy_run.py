def finished_episodes(infos: dict) -> list[tuple[float, int]]:  # (return, length) of those that ended in this step
    episode, done = infos.get("episode"), infos.get("_episode")
    return [] if episode is None else list(zip(episode["r"][done].tolist(), episode["l"][done].tolist()))


def explained_variance(predicted: np.ndarray, target: np.ndarray) -> float:
    """1 - Var[target - predicted] / Var[target]: 1 is a perfect critic, 0 no better than a constant."""
    with np.errstate(over="ignore", invalid="ignore"):  # a diverged run's inf values: Run.log says so in one line
        var = np.var(target)
        return float("nan") if var == 0 else float(1.0 - np.var(target - predicted) / var)


def state_dicts(objects: dict) -> dict:
    return {key: obj.state_dict() if obj is not None else None for key, obj in objects.items()}


def non_finite(state: dict) -> str | None:  # the first floating-point tensor (object.key) with a NaN or inf
    bad = (f"{name}.{key}" for name, tensors in state.items() if tensors is not None for key, v in tensors.items()
           if torch.is_tensor(v) and v.is_floating_point() and not v.isfinite().all())
    return next(bad, None)


class Run:
    """The files and console of one run, so that train() reads as the algorithm (docs/running.md). train() names
    what a checkpoint holds: `model` and `training` (objects with a state_dict, None for one switched off) and
    `counters` (numbers, with their starting values; `start` holds them as training starts)."""

    def __init__(self, args, device: torch.device, batch_size: int, shapes: dict, model: dict, training: dict,
                 counters: dict):
        self.args, self.device, self.shapes, self.model, self.training = args, device, shapes, model, training
        self.checkpoint_step, self.elapsed_before = None, 0.0  # the last checkpoint's step; wall time before resuming
        self.start = self.resume(batch_size, counters) if args.resume else dict(counters)
        # Where training ends: the last whole rollout within --total-timesteps, counted in env steps from where it
        # starts, so that a run resumed with another --num-envs or --num-steps goes on from the same step.
        step = self.start["global_step"]
        self.total_steps = step + (args.total_timesteps - step) // batch_size * batch_size
        self.dir, self.metrics = open_run(args, self.start["global_step"] if args.resume else None)
        if device.type == "cuda":
            print("device cuda: acting on a CPU copy of the agent (refreshed after each update); "
                  "updates and the advantage pass on the GPU")
        self.recent_returns: deque[float] = deque(maxlen=20)
        self.acted_finite = True  # whether the last rollout's policy was finite (Run.log checks after each update)
        self.start_time = self.last_print = time.time()

    def resume(self, batch_size: int, counters: dict) -> dict:
        """Everything in a checkpoint back in place, once it fits and would overwrite no finished run."""
        path = self.args.resume
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # load_state_dict moves weights to the device
        if ckpt.get("algorithm") != ALGORITHM or "torch_rng" not in ckpt:  # model.pt holds no training state
            raise UsageError(f"{path} is not a checkpoint.pt of {ALGORITHM}.py; resume from that run's checkpoint.pt")
        start = {key: ckpt[key] for key in counters}
        check_resumable(path, start["global_step"], self.args.total_timesteps - start["global_step"] < batch_size,
                        self.args)
        for key, value in self.shapes.items():  # another env's spaces: say so before torch's size mismatch
            if ckpt.get(key) != value:
                raise UsageError(f"{path} was trained on {ckpt['args']['env_id']} ({key} {ckpt.get(key)}), these "
                                 f"flags give {self.args.env_id} ({key} {value}); resume with the flags it was "
                                 "trained with (drop --env-id)")
        for key, obj in (self.model | self.training).items():
            if obj is None:
                continue
            if ckpt[key] is None:  # --norm-obs / --norm-reward added on resume
                raise UsageError(f"{path} holds no {key}: its run trained without it; "
                                 "resume without --norm-obs / --norm-reward")
            try:
                obj.load_state_dict(ckpt[key])
            except (RuntimeError, ValueError, KeyError) as e:  # torch's size mismatch, in one line
                raise UsageError(f"{path} does not fit these networks: {str(e).strip().splitlines()[0]}; "
                                 "resume with the flags it was trained with (drop --env-id)") from None
        set_torch_rng(ckpt, self.device)
        self.checkpoint_step, self.elapsed_before = start["global_step"], ckpt.get("elapsed", 0.0)
        print(f"resumed from {path} at step {start['global_step']}")
        return start

    def elapsed(self) -> float:  # the whole run's wall time: this process's and its checkpoint's
        return self.elapsed_before + time.time() - self.start_time

    def diverged(self, step: int, what: str, value) -> "Diverged":
        kept = (f"{self.dir / 'checkpoint.pt'} (step {self.checkpoint_step}) holds the last finite weights"
                if self.checkpoint_step is not None else "no checkpoint was written")
        # Rewards, or observations (through their statistics), that are not finite from a rollout whose policy was
        # finite: the env returned them, and a lower learning rate would not help.
        stats = non_finite({"obs_rms": state_dicts(self.model).get("obs_rms")})
        if self.acted_finite and (stats or what == "episodic_return"):
            return Diverged(f"{self.args.env_id} returned {'observations' if stats else 'rewards'} that are not "
                            f"finite to a finite policy (at step {step} {stats or what} is not finite); check the env; "
                            f"{kept}")
        return Diverged(f"training diverged at step {step}: {what} is {value}; {kept}; try a lower --learning-rate")

    def model_state(self, global_step: int) -> dict:
        """model.pt's contents; Diverged if a weight is not finite, so no file holds diverged weights."""
        model = state_dicts(self.model)
        if bad := non_finite(model):
            raise self.diverged(global_step, bad, "not finite")
        return {"algorithm": ALGORITHM, "args": asdict(self.args), **self.shapes, **model, "global_step": global_step}

    def checkpoint_due(self, step: int, previous_step: int) -> bool:
        every = self.args.checkpoint_every  # a multiple of it in (previous_step, step], or the last step
        return bool(every) and (step // every > previous_step // every or step == self.total_steps)

    def save_checkpoint(self, **counters) -> None:
        counters = {key: counters[key] for key in self.start}  # exactly the counters named in train()
        atomic_save(self.model_state(counters["global_step"]) | state_dicts(self.training) | counters | {
            "torch_rng": torch.get_rng_state(), "elapsed": self.elapsed(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,  # a CPU run: no CUDA
        }, self.dir / "checkpoint.pt")
        self.checkpoint_step = counters["global_step"]

    def log(self, row: dict, episodes: list[tuple[float, int]]) -> None:
        """A metrics row with the clock and the episodes that ended; a loss, the entropy or a return that is not
        finite is Diverged once the row (the diagnosis) is written."""
        episode_returns, episode_lengths = [r for r, _ in episodes], [n for _, n in episodes]
        self.recent_returns.extend(episode_returns)
        elapsed = self.elapsed()
        row = row | {"time": round(elapsed, 2), "sps": round(row["global_step"] / elapsed),
                     "episodic_return": np.mean(episode_returns) if episode_returns else "",
                     "episodic_length": np.mean(episode_lengths) if episode_lengths else "", "episodes": len(episodes)}
        self.metrics.write(row)
        for column in sorted(row, key=lambda c: c != "episodic_return"):  # the env's numbers first: the cause
            if (column.endswith("_loss") or column in ("entropy", "episodic_return")) and row[column] != "" \
                    and not math.isfinite(row[column]):
                raise self.diverged(row["global_step"], column, row[column])
        self.acted_finite = non_finite(state_dicts(self.model)) is None  # the weights the next rollout acts with

    def progress(self, global_step: int) -> None:
        if time.time() - self.last_print < self.args.log_interval and global_step < self.total_steps:
            return
        self.last_print, elapsed = time.time(), self.elapsed()
        sps = global_step / elapsed
        recent = f"{np.mean(self.recent_returns):.1f}" if self.recent_returns else "n/a"
        eta = (self.total_steps - global_step) / max(sps, 1e-9)
        print(f"step {global_step:>9}/{self.total_steps} | {sps:5.0f} SPS | return {recent} "
              f"(last {len(self.recent_returns)} episodes) | {elapsed:5.0f}s elapsed, ~{eta:.0f}s left", flush=True)

    def finish(self, global_step: int) -> dict:
        """model.pt (before anything that could fail), the final evaluation, summary.json; returns the summary."""
        wall_time, args = self.elapsed(), self.args
        model = self.model_state(global_step)
        if args.save_model:
            atomic_save(model, path := self.dir / "model.pt")
            print(f"model saved to {path}; evaluate it with: python {ALGORITHM}.py --evaluate {path}")
        summary = {"algorithm": ALGORITHM, "env_id": args.env_id, "seed": args.seed, "global_step": global_step,
                   "wall_time": round(wall_time, 1), "sps": round(global_step / wall_time),
                   "train_return_recent": float(np.mean(self.recent_returns)) if self.recent_returns else None}
        if args.eval_episodes:
            video_dir = self.dir / "videos" if args.capture_video else None
            returns = evaluate(self.model["agent"], self.model["obs_rms"], args.env_id, args.env_kwargs,
                               args.eval_episodes, eval_seed(args.seed), self.device, video_dir)
            print_eval(returns)
            summary |= {"eval_mean": float(np.mean(returns)), "eval_std": float(np.std(returns)),
                        "eval_returns": returns}
        atomic_save(json.dumps(summary, indent=2), self.dir / "summary.json")
        self.metrics.close()
        return summary


def print_eval(returns: list[float]) -> None:
    print(f"eval: {np.mean(returns):.1f} ± {np.std(returns):.1f} over {len(returns)} episodes (deterministic)")


def run_evaluation(args) -> dict:
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cpu")  # evaluation acts one observation at a time, on the host in any case
    agent, obs_rms, state = load_model(args.evaluate, device)
    check_model_fits(args.evaluate, state, args)
    video_dir = Path(args.evaluate).parent / "videos" if args.capture_video else None
    returns = evaluate(agent, obs_rms, args.env_id, args.env_kwargs, args.eval_episodes, eval_seed(args.seed), device,
                       video_dir)
    print(f"{args.env_id}, model {args.evaluate} (trained {state['global_step']} steps)")
    print_eval(returns)
    if video_dir is not None and video_dir.is_dir():  # not when video was skipped
        print(f"videos in {video_dir}")
    return {"eval_mean": float(np.mean(returns)), "eval_std": float(np.std(returns)), "eval_returns": returns}
