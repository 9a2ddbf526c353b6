"""The Batch API stage: `/v1/batches` over input files of `purpose="batch"`, run through the serving
engine at a lower priority than interactive traffic, durable across restarts."""
