module github.com/seaweedfs-rdma/tests/go

go 1.22
