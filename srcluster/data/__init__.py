"""The data plane: HR images -> WebDataset tar shards in object storage -> a stream of HR crops per rank and worker."""
