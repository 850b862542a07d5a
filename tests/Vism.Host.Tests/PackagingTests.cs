using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using Vism.Testing;

namespace Vism.Host.Tests;

/// <summary>
/// The Debian package, built by packaging/build-deb.sh from this build, installed with dpkg into a
/// fresh copy of a clean debootstrap root (packaging/make-test-root.sh, cached in
/// /var/cache/vism/bookworm-minbase), then `vism validate` and `vism run` from inside it (chroot) as
/// the `vism` user its postinst created.
/// </summary>
public sealed class PackagingTests : IDisposable
{
    private const string CleanRoot = "/var/cache/vism/bookworm-minbase";
    private readonly TempDir _dir = new("vism-deb");
    private readonly List<string> _mounts = [];

    public void Dispose()
    {
        for (int i = _mounts.Count - 1; i >= 0; i--) Run("umount", "-l", _mounts[i]);
        _dir.Dispose();
    }

    private static (int Code, string Output) Run(string program, params string[] args) => RunWith(null, program, args);

    private static (int Code, string Output) RunWith(IReadOnlyDictionary<string, string>? env, string program, params string[] args)
    {
        var psi = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in args) psi.ArgumentList.Add(a);
        foreach ((string k, string v) in env ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        using Process p = Process.Start(psi)!;
        Task<string> err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, output + err.Result);
    }

    private void Mount(params string[] args)
    {
        (int code, string output) = Run("mount", args);
        Assert.True(code == 0, $"mount {string.Join(' ', args)}: {output}");
        _mounts.Add(args[^1]);
    }

    [SkippableFact]
    public async Task DebianPackage_InstallsIntoACleanRoot_AndVismValidatesAndRunsFromIt()
    {
        Skip.IfNot(Mono.Unix.Native.Syscall.geteuid() == 0, "installing into a chroot needs root");
        Skip.IfNot(File.Exists(Path.Combine(CleanRoot, "usr/bin/dpkg")), $"no clean Debian root at {CleanRoot}: run packaging/make-test-root.sh once");
        Skip.IfNot(File.Exists(Path.Combine(CleanRoot, "usr/lib/x86_64-linux-gnu/libssl.so.3")), $"{CleanRoot} lacks libssl3 (the package depends on it): recreate it with packaging/make-test-root.sh");
        Skip.IfNot(File.Exists("/usr/bin/dpkg-deb"), "dpkg-deb is not installed");

        (int code, string output) = Run("sh", Path.Combine(TestPlugins.Repository, "packaging", "build-deb.sh"),
            "--from", Path.GetDirectoryName(TestPlugins.InRepoPluginsDir)!, "--output", _dir["out"], "--fast");
        Assert.True(code == 0, output);
        string deb = output.Trim().Split('\n')[^1];
        Assert.True(File.Exists(deb), output);
        (_, string contents) = Run("dpkg-deb", "--contents", deb);
        Assert.Contains("./lib/systemd/system/vism.service", contents);
        Assert.Contains("./lib/systemd/system/vism@.service", contents);
        Assert.Contains("./etc/vism/vism.toml", contents);
        Assert.Contains("./usr/lib/vism/app/plugins/Vism.Transport.VhostUser/", contents);
        Assert.DoesNotContain("runtimes/win", contents);
        Assert.DoesNotContain("runtimes/osx", contents);
        Assert.DoesNotContain("runtimes/linux-arm", contents);

        // A fresh copy of the clean root for this run (the cache itself is never changed).
        string root = _dir["root"];
        (code, output) = Run("cp", "-a", "--reflink=auto", CleanRoot, root);
        Assert.True(code == 0, output);
        Mount("--bind", "/dev", Path.Combine(root, "dev"));
        Mount("-t", "proc", "proc", Path.Combine(root, "proc"));
        File.Copy(deb, Path.Combine(root, "tmp/vism.deb"));

        (code, output) = Run("chroot", root, "dpkg", "-i", "/tmp/vism.deb");
        Assert.True(code == 0, output);
        (code, output) = Run("chroot", root, "getent", "passwd", "vism");
        Assert.True(code == 0, $"postinst created no vism user: {output}");

        (code, output) = Run("chroot", root, "/usr/bin/vism", "validate", "/etc/vism/vism.toml");
        Assert.True(code == 0, output);
        Assert.Contains("valid, 2 device(s)", output);

        // Run as the vism user, with the readiness protocol on a socket the test listens on.
        File.WriteAllText(Path.Combine(root, "etc/vism/test.toml"), File.ReadAllText(Path.Combine(root, "etc/vism/vism.toml"))
            .Replace("directory = \"/dev/shm/vism\"", "directory = \"/var/lib/vism/mem\""));
        (code, output) = Run("chroot", root, "install", "-d", "-o", "vism", "-g", "vism", "/var/lib/vism", "/run/vism");
        Assert.True(code == 0, output);
        using var notify = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        notify.Bind(new UnixDomainSocketEndPoint(Path.Combine(root, "run/notify")));
        Run("chmod", "0666", Path.Combine(root, "run/notify"));
        notify.ReceiveTimeout = 60_000;
        var psi = new ProcessStartInfo("chroot") { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (string a in new[] { "--userspec=vism:vism", root, "/usr/bin/vism", "run", "/etc/vism/test.toml" }) psi.ArgumentList.Add(a);
        psi.Environment["NOTIFY_SOCKET"] = "/run/notify";
        using Process vism = Process.Start(psi)!;
        Task<string> log = vism.StandardError.ReadToEndAsync();
        try
        {
            var buffer = new byte[1024];
            string ready = Encoding.UTF8.GetString(buffer, 0, notify.Receive(buffer));
            Assert.Contains("READY=1", ready);
            Assert.True(File.Exists(Path.Combine(root, "run/vism/ism0.sock")));
            Assert.True(File.Exists(Path.Combine(root, "run/vism/ism1.sock")));
        }
        finally
        {
            Run("kill", "-TERM", vism.Id.ToString(System.Globalization.CultureInfo.InvariantCulture));
            if (!vism.WaitForExit(TimeSpan.FromSeconds(60))) vism.Kill(entireProcessTree: true);
        }
        Assert.Equal(0, vism.ExitCode);
        Assert.False(File.Exists(Path.Combine(root, "run/vism/ism0.sock")), "the socket was left behind");
        string stderr = await log;
        Assert.Contains("serving 2 device(s)", stderr);
    }
}
