"""Graph-rewrite plugins: freezing Keras models and GraphDef passes."""
