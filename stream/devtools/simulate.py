"""`lamstream simulate`: synthetic users close the loop through the real topics and processes.

Per arm, on one broker (the embedded one unless LAMSTREAM_BOOTSTRAP_SERVERS is set), with its
own topic prefix and data dir: a `lamstream worker`, the `lamstream feedback` join and, for
the learning arm, `lamstream trainer`, all as separate processes. All arms start from the
same frozen base model (popularity over the world's catalogue, trained on the real data) and
meet the same synthetic users (stream/devtools/sim_world.py) with the same seeds:
  learning  epsilon-greedy over the base pool, reranked by what the trainer publishes;
  frozen    the same policy, no trainer: the base model as it was on day one;
  random    uniform slates from the same pool (epsilon = 1).
Each round every active user sends one event (event time advances `round_s` a round),
waits for its recommendation and answers it: the engaged item (click / add_to_cart /
purchase) is its next event, or else it keeps browsing its real history. A session lasts
its drawn length: the slate of a user's last event goes unanswered and a new user takes the
slot, so who is around never depends on the policy. The reward of a recommendation is the
weight of what it earned (1 / 2 / 5 by default, as the join counts).
"""

from __future__ import annotations

import logging
import random
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer

from model.recommenders.neighbors import PopularityRecommender
from model.registry import ModelRegistry
from model.train.progress import step
from stream.client import tail
from stream.devtools.procs import broker_for, start_worker, stop_worker, wait_healthy
from stream.devtools.sim_report import ope_check, plot
from stream.devtools.sim_world import World, WorldConfig
from stream.errors import UsageError
from stream.kafka.admin import consumer_lag, ensure_topics
from stream.kafka.broker import free_port
from stream.kafka.consumers import assign_all, kafka_consumer
from stream.settings import Settings
from stream.topics import topics_for

Log = Callable[[str], None]
ARMS = ("learning", "frozen", "random")
_T0 = 1_700_000_000_000  # event time of the first round, ms
DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "taobao" / \
    "UserBehavior-sample.csv"  # ../shared/data from the project root


@dataclass(frozen=True)
class SimConfig:
    data: Path = DEFAULT_DATA
    layout: str = "auto"
    users: int = 300
    rounds: int = 100
    windows: int = 10
    round_s: int = 60
    pool: int = 100
    k: int = 10
    epsilon_start: float = 0.3
    epsilon_floor: float = 0.05
    seed: int = 0
    arms: tuple[str, ...] = ARMS
    round_timeout_s: float = 60.0
    keep_up_timeout_s: float = 30.0
    world: WorldConfig = WorldConfig()


class _Recs:
    """Collects `recommendations` records by event id in a background thread."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.by_event: dict[str, dict[str, Any]] = {}
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.consumer = kafka_consumer(settings, "lamstream-simulate", enable_auto_commit=False)
        assign_all(self.consumer, [topic], True, 60.0)
        self.thread = threading.Thread(target=self._run, name="sim-recs", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            for msgs in self.consumer.poll(timeout_ms=100).values():
                with self.cond:
                    for m in msgs:
                        rec = orjson.loads(m.value)
                        self.by_event[rec["event_id"]] = rec
                    self.cond.notify_all()

    def wait(self, ids: set[str], timeout: float) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                missing = [i for i in ids if i not in self.by_event]
                left = deadline - time.monotonic()
                if not missing or left <= 0:
                    return {i: self.by_event.pop(i) for i in ids if i in self.by_event}
                self.cond.wait(min(left, 0.5))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.consumer.close()


def publish_base(world: World, data_dir: Path) -> str:
    """The frozen base: popularity over the catalogue, from the real data's counts."""

    rec = PopularityRecommender(world.counts, keep=len(world.counts))
    return ModelRegistry(data_dir).publish(
        "recommender", lambda d: rec.save(d / "popularity"),
        metadata={"served": "popularity", "methods": ["popularity"],
                  "data": {"note": "lamstream simulate base model"}})


def arm_env(arm: str, cfg: SimConfig, settings: Settings) -> dict[str, str]:
    eps = (1.0, 1.0) if arm == "random" else (cfg.epsilon_start, cfg.epsilon_floor)
    # an answer comes one round after its slate: a window of 1.5 rounds credits the slate
    # the user answered and not the one before it (which often showed the same item), so
    # the logged rewards mean what the simulator measures
    window_s = max(1, cfg.round_s * 3 // 2)
    return {
        "LAMSTREAM_POLICY": "epsilon_greedy",
        "LAMSTREAM_POLICY_EPSILON_START": str(eps[0]),
        "LAMSTREAM_POLICY_EPSILON_FLOOR": str(eps[1]),
        "LAMSTREAM_POLICY_EPSILON_DECAY": str(cfg.users * cfg.rounds / 4),
        "LAMSTREAM_POLICY_POOL": str(cfg.pool), "LAMSTREAM_TOP_K": str(cfg.k),
        "LAMSTREAM_POLICY_SEED": str(cfg.seed),
        "LAMSTREAM_MODEL_NAME": "auto", "LAMSTREAM_STORE": "rocksdb",
        "LAMSTREAM_FEEDBACK_WINDOW_S": str(window_s), "LAMSTREAM_ALLOWED_LATENESS_S": "0",
        "LAMSTREAM_PSEUDONYM_KEY": settings.pseudonym_key.get_secret_value()
        if settings.pseudonym_key else secrets.token_hex(16),
        # the trainer's defaults (gate every 1000 records on 1500..3000 held-out ones)

        "LAMSTREAM_TRAINER_CHECKPOINT_S": "2", "LAMSTREAM_TRAINER_REPLAY": "10000",
    }


@contextmanager
def _processes(arm: str, cfg: SimConfig, s: Settings, workdir: Path, log: Log
               ) -> Iterator[Settings]:
    env = arm_env(arm, cfg, s)
    ensure_topics(s)
    procs = []
    try:
        commands = ["worker", "feedback"] + (["trainer"] if arm == "learning" else [])
        for command in commands:
            ps = s.model_copy(update={"web_port": free_port()})
            procs.append((command, start_worker(ps, workdir, workdir / f"{command}.log",
                                                extra_env=env, command=command), ps))
        worker = procs[0]
        wait_healthy(f"http://127.0.0.1:{worker[2].web_port}", worker[1], 180,
                     workdir / "worker.log")
        log(f"  {arm}: {', '.join(commands)} running (logs in {workdir})")
        yield s
    finally:
        for command, p, _ in reversed(procs):
            if p.poll() is not None and p.returncode not in (0, None):
                log(f"  {arm}: {command} exited with {p.returncode} (see {workdir}/"
                    f"{command}.log)")
            stop_worker(p)


@dataclass
class _Tally:
    """What one arm measured, round by round."""

    rounds: int
    rewards: list[list[float]] = field(default_factory=list)
    explored: list[list[bool]] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    missing: int = 0

    def __post_init__(self) -> None:
        self.rewards = [[] for _ in range(self.rounds)]
        self.explored = [[] for _ in range(self.rounds)]

    def windows(self, per: int) -> tuple[list[float], list[float]]:
        """Mean reward and exploratory fraction per window of `per` rounds."""
        starts = range(0, self.rounds, per)
        return ([_mean([x for rr in self.rewards[i:i + per] for x in rr]) for i in starts],
                [_mean([float(x) for rr in self.explored[i:i + per] for x in rr])
                 for i in starts])


class _Arm:
    """One arm's users, producer and collector: plays the rounds against its processes."""

    def __init__(self, s: Settings, world: World, cfg: SimConfig, recs: _Recs,
                 producer: KafkaProducer) -> None:
        self.s, self.world, self.cfg, self.recs, self.producer = s, world, cfg, recs, producer
        self.topics = topics_for(s)
        self.weights = dict(s.feedback_rewards)
        self.recommend_on = set(s.recommend_on)
        self.rng = random.Random(cfg.seed)
        self.active = [world.new_user(i, self.rng) for i in range(cfg.users)]
        self.n_users = cfg.users
        self.tally = _Tally(cfg.rounds)

    def play(self, r: int) -> None:
        """Round r: every active user sends one event and answers its recommendation."""
        sent = self._send(r, _T0 + r * self.cfg.round_s * 1000)
        got = self.recs.wait(set(sent), self.cfg.round_timeout_s * (3 if r == 0 else 1))
        self.tally.missing += len(sent) - len(got)
        for eid, rec in got.items():
            u = self.active[sent[eid]]
            slate = [i["item_id"] for i in rec["items"]]
            answer = self.world.answer(u, slate, self.rng)  # None on the session's last event
            self.tally.rewards[r].append(self.weights.get(answer[0], 0.0) if answer else 0.0)
            self.tally.explored[r].append(bool(rec.get("explored")))
            u.pending = answer
            self.tally.versions.append(rec.get("model_version", "?"))

    def _send(self, r: int, now: int) -> dict[str, int]:
        """Each active user's next event; returns the slot of each that gets a slate."""
        sent: dict[str, int] = {}
        for slot, u in enumerate(self.active):
            typ, item = u.pending or ("view", u.next_view())
            u.pending = None
            eid = f"{u.user_id}-{r}"
            ev = {"event_id": eid, "user_id": u.user_id, "type": typ, "item_id": item,
                  "ts": now + slot}
            if item in self.world.category:
                ev["category"] = self.world.category[item]
            self.producer.send(self.topics.events.name, orjson.dumps(ev), u.user_id.encode())
            if typ in self.recommend_on:  # add_to_cart / purchase get no recommendation
                sent[eid] = slot
        self.producer.flush()
        return sent

    def turn_over(self) -> None:
        """Sessions that have run their length end; a new user takes each freed slot."""
        for slot, u in enumerate(self.active):
            u.steps_left -= 1
            if u.steps_left <= 0:
                self.active[slot] = self.world.new_user(self.n_users, self.rng)
                self.n_users += 1


def run_arm(arm: str, world: World, cfg: SimConfig, settings: Settings, workdir: Path,
            log: Log) -> dict[str, Any]:
    """One arm from a fresh topic prefix and data dir: its processes, the rounds, its result."""
    run = secrets.token_hex(3)
    s = settings.model_copy(update={"topic_prefix": f"sim-{run}-{arm}.",
                                    "app_id": f"lamstream-sim-{run}-{arm}",
                                    "data_dir": workdir})
    workdir.mkdir(parents=True, exist_ok=True)
    publish_base(world, workdir)
    topics = topics_for(s)
    with ExitStack() as stack:
        stack.enter_context(_processes(arm, cfg, s, workdir, log))
        recs = _Recs(s, topics.recommendations.name)
        stack.callback(recs.close)
        producer = KafkaProducer(**s.kafka_python_config(), linger_ms=5)
        stack.callback(producer.close)
        play = _Arm(s, world, cfg, recs, producer)
        started = time.monotonic()
        for r in range(cfg.rounds):
            play.play(r)
            _keep_up(s, arm, cfg)
            play.turn_over()
            step(log, r + 1, cfg.rounds, f"{arm}: round {r + 1}")
            if (r + 1) % max(1, cfg.rounds // cfg.windows) == 0:
                versions = play.tally.versions
                log(f"  {arm}: round {r + 1}/{cfg.rounds}, mean reward "
                    f"{_mean(play.tally.rewards[r]):.3f}, model "
                    f"{versions[-1] if versions else '-'}")
        elapsed = time.monotonic() - started
        feedback = _save_feedback(s, topics.feedback.name, workdir / "feedback.jsonl")
    return _arm_result(play.tally, cfg, play.n_users, elapsed, workdir, feedback)


def _arm_result(tally: _Tally, cfg: SimConfig, users: int, elapsed: float, workdir: Path,
                feedback: int) -> dict[str, Any]:
    win_r, win_e = tally.windows(max(1, cfg.rounds // cfg.windows))
    all_r = [x for rr in tally.rewards for x in rr]
    return {"window_reward": win_r, "explored_fraction": win_e,
            "mean_reward": _mean(all_r), "recommendations": len(all_r),
            "missing_recommendations": tally.missing, "users": users,
            "seconds": round(elapsed, 1), "events_per_s": round(len(all_r) / elapsed, 1),
            "reranker_versions": ModelRegistry(workdir).versions("reranker"),
            "last_model_version": tally.versions[-1] if tally.versions else None,
            "feedback_records": feedback, "feedback_file": str(workdir / "feedback.jsonl")}


def _keep_up(s: Settings, arm: str, cfg: SimConfig) -> None:
    """Pace the users to the service, as real time would: wait (bounded) until the feedback
    join, and the trainer for the learning arm, are within two rounds of the stream. Without
    it a fast simulator would finish before the first feedback is trained on."""
    t = topics_for(s)
    groups = [(f"{s.app_id}-feedback", t.decisions.name)]
    if arm == "learning":
        groups.append((f"{s.app_id}-trainer", t.feedback.name))
    deadline = time.monotonic() + cfg.keep_up_timeout_s
    while time.monotonic() < deadline:
        if all(sum(consumer_lag(s, g, topic).values()) <= 2 * cfg.users for g, topic in groups):
            return
        time.sleep(0.3)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _save_feedback(s: Settings, topic: str, path: Path) -> int:
    """The arm's logged feedback, for `lamstream evaluate policy --feedback FILE`."""
    n = 0
    with path.open("wb") as f:
        for _, value in tail(s, topic, from_beginning=True, timeout=5.0):
            f.write(orjson.dumps(value) + b"\n")
            n += 1
    return n


def simulate(cfg: SimConfig, settings: Settings, workdir: Path, png: Path, log: Log
             ) -> dict[str, Any]:
    """Every arm of `cfg` on one broker; the arms' results, comparisons and the curve."""
    logging.getLogger("kafka").setLevel(logging.ERROR)
    unknown = set(cfg.arms) - set(ARMS)
    if unknown:
        raise UsageError(f"unknown arm(s) {sorted(unknown)}; known: {', '.join(ARMS)}")
    if not cfg.data.exists():
        raise UsageError(f"{cfg.data}: no such event file (--data FILE)")
    world = World.from_events(cfg.data, cfg.layout, cfg.world)
    log(f"world: {len(world.items)} items, {len(world.user_ids)} real users seed the "
        f"synthetic ones ({cfg.data.name})")
    shutil.rmtree(workdir, ignore_errors=True)
    arms: dict[str, Any] = {}
    with broker_for(settings, port=free_port(), log=log) as s:
        for arm in cfg.arms:
            log(f"arm {arm}:")
            arms[arm] = run_arm(arm, world, cfg, s, workdir / arm, log)
    result: dict[str, Any] = {"arms": arms, **_compare(arms)}
    result["config"] = {**asdict(cfg), "data": str(cfg.data)}
    plot(result, max(1, cfg.rounds // cfg.windows), cfg.users, png)
    result["png"] = str(png)
    return result


def _compare(arms: dict[str, Any]) -> dict[str, Any]:
    """The figures that compare arms: the learning gain, the baselines, the OPE check."""
    out: dict[str, Any] = {}
    if "learning" in arms:
        first, last = arms["learning"]["window_reward"][0], arms["learning"]["window_reward"][-1]
        out["first_window_reward"] = first
        out["last_window_reward"] = last
        out["learning_gain"] = last / first if first else None
    for arm in ("frozen", "random"):
        if arm in arms:
            out[f"{arm}_last_window_reward"] = arms[arm]["window_reward"][-1]
            out[f"{arm}_mean_reward"] = arms[arm]["mean_reward"]
    if "frozen" in arms and "random" in arms:
        out["ope_check"] = ope_check(Path(arms["frozen"]["feedback_file"]),
                                     arms["random"]["mean_reward"])
    return out


def default_workdir(settings: Settings) -> Path:
    """DATA_DIR/simulate: the per-arm data dirs, logs and logged feedback."""
    return Path(settings.data_dir) / "simulate"
