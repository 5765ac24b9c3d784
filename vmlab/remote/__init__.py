"""Talking to a running guest over SSH: one Transport, over paramiko or OpenSSH's shared
connection, and the keys of the lab that pin the guest and log in."""
