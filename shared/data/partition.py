"""Split one dataset into per-client partitions with the flwr_datasets partitioners.

natural    each client gets whole movies (column "movie_name"), movies dealt out by a seeded
           shuffle, so a client holds the reviews of one or more movies
iid        a seeded shuffle cut into equal contiguous shards
dirichlet  for every label, its rows dealt to the clients in proportions drawn from
           Dirichlet(alpha) (column "label"; Flower's DirichletPartitioner); where a small
           alpha leaves clients with fewer than 2 rows in every redraw, the same draw with
           those few clients topped up from the largest one
"""

import warnings

import numpy as np
from datasets import Dataset

from shared.errors import LoraXSError

PARTITIONS = ("natural", "iid", "dirichlet")
MIN_PARTITION_SIZE = 2  # each client splits its partition into train and test
USER_COLUMN = "user"  # temporary column: the client a row goes to (natural partitions)
DIRICHLET_FLOOR_STREAM = 17  # the repaired Dirichlet draw's own random stream


def partition_dataset(
    ds: Dataset, num_partitions: int, method: str, alpha: float = 0.5, seed: int = 0
) -> list[Dataset]:
    """`num_partitions` disjoint datasets covering `ds`, each with at least 2 rows."""
    if method not in PARTITIONS:
        raise LoraXSError(f"unknown partitioning {method!r}; choose one of: {', '.join(PARTITIONS)}")
    if not alpha > 0:
        raise LoraXSError(f"the Dirichlet alpha must be > 0, got {alpha}")
    if num_partitions < 1:
        raise LoraXSError(f"--num-clients must be at least 1, got {num_partitions}")
    if len(ds) < MIN_PARTITION_SIZE * num_partitions:
        raise LoraXSError(
            f"--num-clients {num_partitions} is too many for {len(ds)} examples: every client "
            f"needs at least {MIN_PARTITION_SIZE}; use fewer clients"
        )

    if method == "natural":
        partitions = _natural_partitions(ds, num_partitions, seed)
    elif method == "iid":
        from flwr_datasets.partitioner import IidPartitioner  # lazy: flwr_datasets imports seaborn (~2 s)

        partitioner = IidPartitioner(num_partitions=num_partitions)
        partitioner.dataset = ds.shuffle(seed=seed)
        partitions = [partitioner.load_partition(i) for i in range(num_partitions)]
    else:
        partitions = _dirichlet_partitions(ds, num_partitions, alpha, seed)

    for i, partition in enumerate(partitions):
        if len(partition) < MIN_PARTITION_SIZE:
            raise LoraXSError(
                f"{method} partition {i} of {num_partitions} has only {len(partition)} example(s), "
                f"at least {MIN_PARTITION_SIZE} are needed; use fewer clients"
            )
    return partitions


def _natural_partitions(ds: Dataset, num_partitions: int, seed: int) -> list[Dataset]:
    if "movie_name" not in ds.column_names:
        raise LoraXSError(
            "natural partitioning needs a 'movie_name' column, which this dataset lacks; "
            "use iid or dirichlet partitioning"
        )
    movies = sorted(ds.unique("movie_name"))
    if num_partitions > len(movies):
        raise LoraXSError(
            f"--num-clients {num_partitions} is larger than the {len(movies)} natural "
            f"partitions (movies) of this dataset"
        )
    shuffled = np.random.default_rng(seed).permutation(len(movies))
    user_of_movie = {movies[m]: position % num_partitions for position, m in enumerate(shuffled)}
    with_users = ds.add_column(USER_COLUMN, [user_of_movie[m] for m in ds["movie_name"]])

    from flwr_datasets.partitioner import NaturalIdPartitioner

    partitioner = NaturalIdPartitioner(partition_by=USER_COLUMN)
    partitioner.dataset = with_users
    # Natural ids are sorted, so partition i holds the rows of user i.
    return [partitioner.load_partition(i).remove_columns(USER_COLUMN) for i in range(num_partitions)]


def _dirichlet_partitions(ds: Dataset, num_partitions: int, alpha: float, seed: int) -> list[Dataset]:
    if "label" not in ds.column_names:
        raise LoraXSError(
            "dirichlet partitioning needs a 'label' column, which this dataset lacks; use iid partitioning"
        )
    from flwr_datasets.partitioner import DirichletPartitioner

    partitioner = DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        alpha=alpha,
        min_partition_size=MIN_PARTITION_SIZE,
        seed=seed,
    )
    partitioner.dataset = ds
    try:
        with warnings.catch_warnings():  # it warns on every resampling; we report failure once
            warnings.simplefilter("ignore")
            return [partitioner.load_partition(i) for i in range(num_partitions)]
    except ValueError:  # a small alpha leaves some clients (nearly) empty in every redraw
        return _dirichlet_with_floor(ds, num_partitions, alpha, seed, MIN_PARTITION_SIZE)


def _dirichlet_with_floor(ds: Dataset, num_partitions: int, alpha: float, seed: int, floor: int) -> list[Dataset]:
    """The same draw as Flower's DirichletPartitioner (for every label, its rows dealt to the
    clients in proportions from Dirichlet(alpha)), then each client under `floor` rows takes
    rows, one at a time, from the largest client. At alpha = 0.1 over 2 labels about a tenth of
    100 clients get fewer than 2 rows in any draw; the repair moves only those few rows, so the
    label skew stays what alpha makes it."""
    rng = np.random.default_rng([seed, DIRICHLET_FLOOR_STREAM])
    labels = np.asarray(ds["label"])
    owner = np.empty(len(labels), dtype=np.int64)  # row -> client
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(num_partitions, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(np.int64)
        for client, part in enumerate(np.split(rows, cuts)):
            owner[part] = client
    counts = np.bincount(owner, minlength=num_partitions)
    for client in np.flatnonzero(counts < floor):
        while counts[client] < floor:
            donor = int(np.argmax(counts))
            row = int(rng.choice(np.flatnonzero(owner == donor)))
            owner[row] = client
            counts[donor] -= 1
            counts[client] += 1
    return [ds.select(np.flatnonzero(owner == client)) for client in range(num_partitions)]
