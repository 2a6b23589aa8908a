"""Study tooling: throughput benchmarks (`bench`, against PyTorch: `bench_torch`), curves
(`plot`) and tables (`table`) of run workdirs, and the CIFAR-10 study's queue (`cifar`)."""
