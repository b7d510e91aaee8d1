package integration

import (
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/clientauth"
	"github.com/pgsidecar/pgsidecar/internal/testenv"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// upstreamNoUser is pg's URL without a user or database: backends log in
// as the client's user, with the client's password, to the client's
// database.
func upstreamNoUser(pg *testenv.Postgres) string { return pg.URL("", "", "") }

// currentUser connects to url and returns current_user on the backend.
func currentUser(t testing.TB, url string) (string, error) {
	t.Helper()
	ctx := ctxT(t)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	var u string
	err = conn.QueryRow(ctx, "select current_user").Scan(&u)
	return u, err
}

// wantAuthFailed requires err to be PostgreSQL's answer to a bad password.
func wantAuthFailed(t testing.TB, err error, user string) {
	t.Helper()
	if err == nil {
		t.Fatalf("login as %q succeeded; want 28P01", user)
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Fatalf("login as %q: %v; want a server error 28P01", user, err)
	}
	want := `password authentication failed for user "` + user + `"`
	if pe.Code != "28P01" || pe.Message != want || pe.Severity != "FATAL" {
		t.Fatalf("login as %q: %s %s %q; want FATAL 28P01 %q", user, pe.Severity, pe.Code, pe.Message, want)
	}
}

func TestAuthMethods(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	ctx := ctxT(t)

	for _, tc := range []struct {
		name   string
		method clientauth.Method
		// secret is what the sidecar stores for user with password pw.
		secret func(t *testing.T, user, pw string) string
		// asClient: the upstream URL names no user, so the backend logs in
		// as the client (which needs the plaintext password).
		asClient bool
	}{
		{"scram plaintext as client", clientauth.SCRAMSHA256, plain, true},
		{"scram plaintext as upstream user", clientauth.SCRAMSHA256, plain, false},
		{"scram secret", clientauth.SCRAMSHA256, scramSecret, false},
		{"md5 plaintext as client", clientauth.MD5, plain, true},
		{"md5 hash", clientauth.MD5, md5Hash, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			user, pw := uniq("auth"), "pw-"+uniq("s")
			opts := sidecarOptions{Proxy: proxy.Config{
				AuthMethod: tc.method,
				Users:      users(t, user, tc.secret(t, user, pw)),
			}}
			wantUser := pg.SuperUser
			if tc.asClient {
				if err := pg.CreateRole(ctx, user, pw); err != nil {
					t.Fatal(err)
				}
				opts.Upstream = upstreamNoUser(pg)
				wantUser = user
			}
			sc := startSidecar(t, pg, opts)

			got, err := currentUser(t, sc.URL(user, pw, "postgres"))
			if err != nil {
				t.Fatalf("login with the right password: %v", err)
			}
			if got != wantUser {
				t.Fatalf("backend current_user %q, want %q", got, wantUser)
			}
			_, err = currentUser(t, sc.URL(user, pw+"x", "postgres"))
			wantAuthFailed(t, err, user)
			_, err = currentUser(t, sc.URL(user, "", "postgres"))
			wantAuthFailed(t, err, user)
			nobody := uniq("nobody")
			_, err = currentUser(t, sc.URL(nobody, pw, "postgres"))
			wantAuthFailed(t, err, nobody)
		})
	}
}

func plain(t *testing.T, user, pw string) string { return pw }

func scramSecret(t *testing.T, user, pw string) string {
	s, err := clientauth.NewSCRAMSecret(pw)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func md5Hash(t *testing.T, user, pw string) string { return clientauth.MD5Hash(user, pw) }

// A secret that cannot check the method in use looks like a wrong password.
func TestAuthSecretUnusableWithMethod(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	for _, tc := range []struct {
		name   string
		method clientauth.Method
		secret func(t *testing.T, user, pw string) string
	}{
		{"md5 with a scram secret", clientauth.MD5, scramSecret},
		{"scram with an md5 hash", clientauth.SCRAMSHA256, md5Hash},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			user, pw := uniq("auth"), "pw"
			sc := startSidecar(t, pg, sidecarOptions{Proxy: proxy.Config{
				AuthMethod: tc.method,
				Users:      users(t, user, tc.secret(t, user, pw)),
			}})
			_, err := currentUser(t, sc.URL(user, pw, "postgres"))
			wantAuthFailed(t, err, user)
		})
	}
}

func TestAuthTrustDefault(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{})
	// Trust: any name and password get in; the backend logs in as the
	// upstream URL's user.
	for _, user := range []string{pg.SuperUser, uniq("anyone")} {
		got, err := currentUser(t, sc.URL(user, "not-checked", "postgres"))
		if err != nil {
			t.Fatalf("trust login as %q: %v", user, err)
		}
		if got != pg.SuperUser {
			t.Fatalf("current_user %q, want %q", got, pg.SuperUser)
		}
	}
}

// Trust with an upstream URL that names no user: the backend refuses the
// login itself, and the client hears PostgreSQL's own error.
func TestAuthTrustBackendRefuses(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	ctx := ctxT(t)
	user := uniq("auth")
	if err := pg.CreateRole(ctx, user, "right"); err != nil {
		t.Fatal(err)
	}
	sc := startSidecar(t, pg, sidecarOptions{
		Upstream: upstreamNoUser(pg),
		Proxy:    proxy.Config{Users: users(t, user, "wrong")},
	})
	_, err := currentUser(t, sc.URL(user, "", "postgres"))
	wantAuthFailed(t, err, user)
}

func TestAuthUserlistFile(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	ctx := ctxT(t)
	plainUser, scramUser, md5User := uniq("ul_plain"), uniq("ul_scram"), uniq("ul_md5")
	if err := pg.CreateRole(ctx, plainUser, `pa"ss`); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "userlist.txt")
	file := strings.Join([]string{
		"; PgBouncer userlist",
		`"` + plainUser + `" "pa""ss"`,
		"",
		"# comment",
		`"` + scramUser + `" "` + scramSecret(t, scramUser, "scram-pw") + `"`,
		`"` + md5User + `" "` + clientauth.MD5Hash(md5User, "md5-pw") + `" trailing ignored`,
	}, "\n") + "\n"
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	store, err := clientauth.LoadUserlist(path)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("scram, backend as client", func(t *testing.T) {
		t.Parallel()
		sc := startSidecar(t, pg, sidecarOptions{
			Upstream: upstreamNoUser(pg),
			Proxy:    proxy.Config{AuthMethod: clientauth.SCRAMSHA256, Users: store},
		})
		got, err := currentUser(t, sc.URL(plainUser, url.QueryEscape(`pa"ss`), "postgres"))
		if err != nil {
			t.Fatalf("login as %s: %v", plainUser, err)
		}
		if got != plainUser {
			t.Fatalf("current_user %q, want %q", got, plainUser)
		}
		_, err = currentUser(t, sc.URL(plainUser, "pa", "postgres"))
		wantAuthFailed(t, err, plainUser)
	})
	t.Run("scram, upstream user", func(t *testing.T) {
		t.Parallel()
		sc := startSidecar(t, pg, sidecarOptions{Proxy: proxy.Config{AuthMethod: clientauth.SCRAMSHA256, Users: store}})
		for user, pw := range map[string]string{plainUser: `pa"ss`, scramUser: "scram-pw"} {
			if got, err := currentUser(t, sc.URL(user, url.QueryEscape(pw), "postgres")); err != nil || got != pg.SuperUser {
				t.Fatalf("login as %s: %q, %v", user, got, err)
			}
		}
		_, err := currentUser(t, sc.URL(scramUser, "md5-pw", "postgres"))
		wantAuthFailed(t, err, scramUser)
		// The md5 hash cannot check a SCRAM exchange.
		_, err = currentUser(t, sc.URL(md5User, "md5-pw", "postgres"))
		wantAuthFailed(t, err, md5User)
	})
	t.Run("md5, upstream user", func(t *testing.T) {
		t.Parallel()
		sc := startSidecar(t, pg, sidecarOptions{Proxy: proxy.Config{AuthMethod: clientauth.MD5, Users: store}})
		for user, pw := range map[string]string{plainUser: `pa"ss`, md5User: "md5-pw"} {
			if got, err := currentUser(t, sc.URL(user, url.QueryEscape(pw), "postgres")); err != nil || got != pg.SuperUser {
				t.Fatalf("login as %s: %q, %v", user, got, err)
			}
		}
		_, err := currentUser(t, sc.URL(md5User, "scram-pw", "postgres"))
		wantAuthFailed(t, err, md5User)
		// The SCRAM secret cannot check an md5 exchange.
		_, err = currentUser(t, sc.URL(scramUser, "scram-pw", "postgres"))
		wantAuthFailed(t, err, scramUser)
	})
}
