"""Research tools built on the library: class-pair and regularisation sweeps, convex capacity and
separability certificates, one-vs-rest feature-convex classifiers for many classes (issue #8)."""
