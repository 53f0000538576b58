module github.com/seaweedfs-rdma/client/go

go 1.26.0

require golang.org/x/sys v0.49.0
