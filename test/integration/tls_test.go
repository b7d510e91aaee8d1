package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// serverTLS returns a server TLS configuration with a fresh self-signed
// certificate for 127.0.0.1, and the certificate's PEM file (usable as
// sslrootcert).
func serverTLS(t testing.TB) (*tls.Config, string) {
	t.Helper()
	certPEM, keyPEM, err := testenv.SelfSignedCert()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "root.pem")
	if err := os.WriteFile(path, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}}, path
}

// connectPg opens a pgconn connection and checks that it serves a query.
func connectPg(t testing.TB, url string) (*pgconn.PgConn, error) {
	t.Helper()
	ctx := ctxT(t)
	conn, err := pgconn.Connect(ctx, url)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	res, err := conn.Exec(ctx, "select 6 * 7").ReadAll()
	if err != nil {
		t.Fatalf("query: %v", err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != "42" {
		t.Fatalf("select 6 * 7 = %v", res)
	}
	return conn, nil
}

func isTLS(c *pgconn.PgConn) bool {
	_, ok := c.Conn().(*tls.Conn)
	return ok
}

func TestTLSClientAllow(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	cfg, rootFile := serverTLS(t)
	sc := startSidecar(t, pg, sidecarOptions{Proxy: proxy.Config{TLS: cfg}})

	t.Run("require", func(t *testing.T) {
		conn, err := connectPg(t, sc.SuperURL(pg, "sslmode=require"))
		if err != nil {
			t.Fatal(err)
		}
		if !isTLS(conn) {
			t.Fatalf("sslmode=require gave a %T", conn.Conn())
		}
		st := conn.Conn().(*tls.Conn).ConnectionState()
		if !st.HandshakeComplete || st.Version < tls.VersionTLS12 {
			t.Fatalf("TLS state: complete %v version %x", st.HandshakeComplete, st.Version)
		}
	})
	t.Run("verify-full", func(t *testing.T) {
		conn, err := connectPg(t, sc.SuperURL(pg, "sslmode=verify-full", "sslrootcert="+url.QueryEscape(rootFile)))
		if err != nil {
			t.Fatal(err)
		}
		if !isTLS(conn) {
			t.Fatalf("sslmode=verify-full gave a %T", conn.Conn())
		}
	})
	t.Run("verify-full with another root", func(t *testing.T) {
		_, otherRoot := serverTLS(t)
		_, err := connectPg(t, sc.SuperURL(pg, "sslmode=verify-full", "sslrootcert="+url.QueryEscape(otherRoot)))
		var uae x509.UnknownAuthorityError
		if err == nil || !errors.As(err, &uae) {
			t.Fatalf("verify-full against an unrelated root: %v; want an unknown authority error", err)
		}
	})
	t.Run("cancel over TLS", func(t *testing.T) {
		// pgx sends the CancelRequest over TLS too when the session is.
		direct := pgDirect(t, pg)
		conn := cancellingConn(t, sc.SuperURL(pg, "sslmode=require"))
		if !isTLS(conn.PgConn()) {
			t.Fatal("not a TLS connection")
		}
		tag := uniq("tlsclientcancel")
		ctx, cancel := context.WithCancel(ctxT(t))
		defer cancel()
		errc := make(chan error, 1)
		go func() {
			_, err := conn.Exec(ctx, "select pg_sleep(30) /* "+tag+" */")
			errc <- err
		}()
		waitActive(t, direct, tag)
		cancel()
		select {
		case err := <-errc:
			if code := pgCode(err); code != "57014" {
				t.Fatalf("cancelled query: %v (SQLSTATE %q); want 57014", err, code)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("cancel over TLS did not stop the query within 5s")
		}
		selectOne(t, conn)
	})
	t.Run("bytes after SSLRequest", func(t *testing.T) {
		// Plaintext sent before the handshake must not be read as if it
		// came over TLS (CVE-2021-23222): the proxy refuses the connection.
		raw := dialRaw(t, sc.Addr)
		b := binary.BigEndian.AppendUint32(nil, 8)
		b = binary.BigEndian.AppendUint32(b, codeSSLRequest)
		b = append(b, 'Q', 0, 0, 0, 13, 's', 'e', 'l', 'e', 'c', 't', ' ', '1', 0)
		if _, err := raw.nc.Write(b); err != nil {
			t.Fatal(err)
		}
		got := expectClosed(t, raw.nc, 3*time.Second)
		if len(got) > 0 && got[0] == 'S' {
			t.Fatalf("proxy agreed to TLS with plaintext bytes queued: %q", got)
		}
	})
	t.Run("plaintext still allowed", func(t *testing.T) {
		conn, err := connectPg(t, sc.SuperURL(pg, "sslmode=disable"))
		if err != nil {
			t.Fatal(err)
		}
		if isTLS(conn) {
			t.Fatal("sslmode=disable gave a TLS connection")
		}
	})
}

func TestTLSClientRequire(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	cfg, _ := serverTLS(t)
	sc := startSidecar(t, pg, sidecarOptions{Proxy: proxy.Config{TLS: cfg, TLSMode: proxy.TLSRequire}})

	_, err := connectPg(t, sc.SuperURL(pg, "sslmode=disable"))
	if err == nil {
		t.Fatal("plaintext client accepted with TLSMode require")
	}
	if code := pgCode(err); code != "28000" {
		t.Fatalf("plaintext client: %v (SQLSTATE %q); want 28000", err, code)
	}
	conn, err := connectPg(t, sc.SuperURL(pg, "sslmode=require"))
	if err != nil {
		t.Fatalf("TLS client with TLSMode require: %v", err)
	}
	if !isTLS(conn) {
		t.Fatal("not a TLS connection")
	}
}

func TestTLSClientDisable(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	cfg, _ := serverTLS(t)
	for _, tc := range []struct {
		name string
		cfg  proxy.Config
	}{
		{"mode disable with a certificate", proxy.Config{TLS: cfg, TLSMode: proxy.TLSDisable}},
		{"no certificate", proxy.Config{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sc := startSidecar(t, pg, sidecarOptions{Proxy: tc.cfg})

			raw := dialRaw(t, sc.Addr)
			raw.writeStartupCode(t, codeSSLRequest)
			if b := raw.readByte(t); b != 'N' {
				t.Fatalf("SSLRequest answered %q, want 'N'", b)
			}
			raw.startup(t, pg.SuperUser, "postgres")
			if rows, _, e := raw.simpleQuery(t, "select 'plain'"); e != nil || len(rows) != 1 || rows[0] != "plain" {
				t.Fatalf("query after 'N': %v %v", rows, e)
			}

			_, err := connectPg(t, sc.SuperURL(pg, "sslmode=require"))
			if err == nil {
				t.Fatal("sslmode=require succeeded against a proxy that refuses TLS")
			}
			if pgCode(err) != "" {
				t.Fatalf("sslmode=require: a server error %v; want the client to refuse", err)
			}
			conn, err := connectPg(t, sc.SuperURL(pg, "sslmode=prefer"))
			if err != nil {
				t.Fatalf("sslmode=prefer: %v", err)
			}
			if isTLS(conn) {
				t.Fatal("sslmode=prefer got TLS from a proxy that refuses it")
			}
		})
	}
}

func TestTLSGSSENCRequestRefused(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	cfg, _ := serverTLS(t)
	sc := startSidecar(t, pg, sidecarOptions{Proxy: proxy.Config{TLS: cfg}})

	t.Run("then plaintext", func(t *testing.T) {
		raw := dialRaw(t, sc.Addr)
		raw.writeStartupCode(t, codeGSSENCRequest)
		if b := raw.readByte(t); b != 'N' {
			t.Fatalf("GSSENCRequest answered %q, want 'N'", b)
		}
		raw.startup(t, pg.SuperUser, "postgres")
		if rows, tx, e := raw.simpleQuery(t, "select 'after gss'"); e != nil || tx != 'I' || len(rows) != 1 || rows[0] != "after gss" {
			t.Fatalf("query after GSSENCRequest: %v %q %v", rows, tx, e)
		}
	})
	t.Run("then TLS", func(t *testing.T) {
		// libpq with gssencmode=prefer and sslmode=require sends
		// GSSENCRequest, then SSLRequest on the same connection.
		raw := dialRaw(t, sc.Addr)
		raw.writeStartupCode(t, codeGSSENCRequest)
		if b := raw.readByte(t); b != 'N' {
			t.Fatalf("GSSENCRequest answered %q, want 'N'", b)
		}
		raw.writeStartupCode(t, codeSSLRequest)
		if b := raw.readByte(t); b != 'S' {
			t.Fatalf("SSLRequest answered %q, want 'S'", b)
		}
		tc := tls.Client(raw.nc, &tls.Config{InsecureSkipVerify: true})
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		raw.fe = pgproto3.NewFrontend(tc, tc)
		raw.startup(t, pg.SuperUser, "postgres")
		if rows, _, e := raw.simpleQuery(t, "select 'gss then tls'"); e != nil || len(rows) != 1 || rows[0] != "gss then tls" {
			t.Fatalf("query: %v %v", rows, e)
		}
	})
}

func TestTLSBackend(t *testing.T) {
	t.Parallel()
	pg := testenv.NewPostgres(t, testenv.PostgresOptions{SSL: true})
	upstream := strings.Replace(pg.URL(pg.SuperUser, pg.SuperPassword, "postgres"), "sslmode=disable", "sslmode=require", 1)
	if !strings.Contains(upstream, "sslmode=require") {
		t.Fatalf("upstream URL %q has no sslmode to replace", upstream)
	}
	sc := startSidecar(t, pg, sidecarOptions{Upstream: upstream})
	ctx := ctxT(t)
	conn := cancellingConn(t, sc.SuperURL(pg))
	var ssl bool
	if err := conn.QueryRow(ctx, "select ssl from pg_stat_ssl where pid = pg_backend_pid()").Scan(&ssl); err != nil {
		t.Fatal(err)
	}
	if !ssl {
		t.Fatal("backend connection is not TLS")
	}

	// A cancel is forwarded over TLS too, and still reaches the backend.
	direct := pgDirect(t, pg)
	tag := uniq("tlscancel")
	qctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := conn.Exec(qctx, "select pg_sleep(30) /* "+tag+" */")
		errc <- err
	}()
	waitActive(t, direct, tag)
	cancel()
	select {
	case err := <-errc:
		if code := pgCode(err); code != "57014" {
			t.Fatalf("cancelled query over a TLS backend: %v (SQLSTATE %q); want 57014", err, code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancel did not reach the TLS backend within 5s")
	}
	selectOne(t, conn)
}
