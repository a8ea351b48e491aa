# attache image: one static binary and nothing else.
#
# The build context is dist/, holding a static binary named attache:
#
#   CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o dist/attache ./cmd/attache
#   docker build -f Dockerfile -t attache:dev dist
#
# FROM scratch because attache needs no libc, shell or CA bundle, and because
# nothing can be pulled on the machines that build it. Without an
# /etc/nsswitch.conf Go's resolver reads /etc/hosts first, then DNS, so both
# --link aliases and user-defined networks' embedded DNS resolve.
#
# No EXPOSE: the ports depend on the links or arguments a container gets
# (docker run --expose 6379 ... when a linking client needs the variables).
FROM scratch
COPY attache /attache
ENTRYPOINT ["/attache"]
