"""sparsa: make models and solvers sparse, small and fast on CPU and GPU.

The package is layered; imports point down only, and packages of one layer never import each
other (``tests/test_layers.py`` reads every import and holds the code to it)::

    cli                                         flags in, one library call, its summary out
    demo                                        the main job on the embedded model
    bench                                       benchmarks, peers in the same run
    compress  attention  sfm  merge             engines: algorithms and their pipelines
    evaluate                                    perplexity and embedding agreement of models
    nn                                          SparseLinear, surgery, decode, checkpoints, models
    kernels                                     compute on formats: reference, cpu (numba), triton
    formats  data                               compressed layouts; corpora, scenes
    errors  atomic  registry  json_safe  openmp  import_noise   shared by every layer
"""

__version__ = "0.1.0"

from sparsa.openmp import spin_before_sleeping

spin_before_sleeping()  # before torch or numba loads an OpenMP runtime

from sparsa.import_noise import quiet_import_noise  # noqa: E402

quiet_import_noise()

from sparsa.transformers_hook import install  # noqa: E402

install()  # transformers' from_pretrained reads sparsa checkpoints (registered when it loads)
