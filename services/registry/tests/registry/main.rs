//! Integration tests of the registry against a real PostgreSQL (one fresh database per test) and real sockets.

mod cli;
mod grpc;
mod mqtt;
mod rest;
mod service;
mod support;
