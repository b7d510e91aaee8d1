package main

import (
	"context"
	"errors"
	"os"
	"syscall"
	"testing"
)

func TestSignalContext(t *testing.T) {
	for _, tt := range []struct {
		sig  syscall.Signal
		want error
	}{{syscall.SIGTERM, errTerminated}, {syscall.SIGINT, errInterrupted}} {
		t.Run(tt.sig.String(), func(t *testing.T) {
			ctx, stop := signalContext(context.Background())
			defer stop()
			// The handler is installed before signalContext returns, so the
			// signal cannot reach the default action (one signal only: the
			// handler is removed after the first).
			if err := syscall.Kill(os.Getpid(), tt.sig); err != nil {
				t.Fatal(err)
			}
			<-ctx.Done()
			if cause := context.Cause(ctx); !errors.Is(cause, tt.want) {
				t.Errorf("cause = %v, want %v", cause, tt.want)
			}
		})
	}
}

func TestSignalContextStop(t *testing.T) {
	ctx, stop := signalContext(context.Background())
	stop()
	<-ctx.Done()
	if cause := context.Cause(ctx); errors.Is(cause, errInterrupted) || errors.Is(cause, errTerminated) {
		t.Errorf("cause after stop = %v, want a plain cancellation", cause)
	}
}
