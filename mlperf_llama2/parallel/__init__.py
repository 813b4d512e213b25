"""Mechanisms beyond one GPU: process groups, tensor-parallel shards in lockstep, routing, the SUT-node wire protocol.

The backends built on them (tensor/data-parallel engine, SUT nodes) live in `backends/`; nothing here imports
`backends`.
"""
