"""vaepipe: a folder of images -> VAE embeddings in Parquet -> FAISS index -> bulk neighbour tables.

The library is plain Python (no Prefect). Stages, in data order:

    ingest      folder -> manifest.parquet (every file seen, bad ones with the reason)
    train       manifest -> models/<model_id>/ (VAE weights, config, per-epoch metrics)
    embed       manifest + model -> embeddings/<model_id>/part-*.parquet (posterior means)
    index       embeddings -> index/<model_id>/ (FAISS index, row ids, index.json)
    query       index + queries -> neighbour rows as data (search_files, search_collection) or, as a bulk job,
                runs/<run_id>/neighbours.parquet (query_folder, query_list, query_all)
    duplicates  an all-against-all table -> exact and near-duplicate groups
    report      neighbour table -> runs/<run_id>/report.html; samples -> samples/<run_id>/index.html
    generate    model -> samples/<run_id>/*.png

build (vaepipe.build.build) runs ingest -> train -> embed -> index in order, with the model-reuse policy, and
publishes collection.json: the one call the CLI, the flows, the tests and the benchmarks build through.
pipeline (vaepipe.pipeline.run_pipeline) is the whole job in one call: build, query_all, generate_for.
cleanup acts on duplicate groups (keeper plan, move or link, undo); serve shows a workdir's pages over HTTP.

Shared pieces: errors (VaepipeError, ImageError), config (every knob, one place), images (file -> tensor),
model (the VAE), store (workdir layout, atomic writes, schemas, the build lock), progress (log lines, listeners),
fashion_mnist (the demo and benchmark data).
"""

import os

__version__ = "0.1.0"

# Arrow allocates from the pool this names, chosen once when pyarrow loads; Parquet's reading and writing take that
# pool whatever pyarrow.set_memory_pool says later. Its default, mimalloc, kept what the views cache's writing freed
# through the rest of a query; the system allocator's freed memory goes back with store.trim_heap, as numpy's and
# torch's does (BENCHMARKS.md, "Memory"). A pool the user's environment names stands; where pyarrow was loaded
# before vaepipe, store sets this pool for what Python asks of Arrow.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
