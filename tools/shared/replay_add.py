    def add(self, obs: np.ndarray, actions: np.ndarray, next_obs: np.ndarray, rewards: np.ndarray,
            terminations: np.ndarray, truncations: np.ndarray, infos: dict) -> None:
        """Stores one step of the vector env, as it returned it (row k of each array is env k's),
        with s' = true_next_obs(...) and done = terminations alone: truncations keep their bootstrap."""
        next_obs = true_next_obs(next_obs, terminations | truncations, infos)
        n, columns = len(actions), (obs, actions, rewards, next_obs, terminations)
        where = slice(self.pos, self.pos + n)  # a slice unless the rows wrap around the end: far cheaper to index
        if self.pos + n > self.capacity:
            where = (self.pos + np.arange(n)) % self.capacity
        if self.host is not None:  # on the CPU, numpy writes each column in place: a fraction of torch's cost per call
            for place, column in zip(self.places.values(), columns):
                self.host[where, place] = column
        else:  # on a GPU, the step's rows go up in one copy
            new_rows = np.concatenate([np.reshape(column, (n, -1)) for column in columns], 1, dtype=np.float32)
            index = where if isinstance(where, slice) else to_device(where, self.device)
            self.rows[index] = to_device(new_rows, self.device)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
