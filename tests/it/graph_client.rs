//! Integration tests: graph_client.
