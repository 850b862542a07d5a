using Xunit;
using System.Diagnostics;
using System.Text;

namespace Vism.Testing;

/// <summary>
/// The guest image of <c>tools/guest</c>: the Debian cloud kernel from the QEMU root and an
/// initramfs with busybox, <c>vism-guest</c> and its flows, built once per test process from
/// this checkout (<c>make -C tools/guest initramfs</c>).
/// </summary>
public static class GuestImage
{
    private static readonly Lock BuildLock = new();
    private static bool _toolBuilt, _initramfsBuilt;

    /// <summary>The checkout this test assembly was built from (the directory holding tools/guest).</summary>
    public static string RepositoryRoot
    {
        get
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            {
                if (File.Exists(Path.Combine(dir.FullName, "tools", "guest", "Makefile")))
                    return dir.FullName;
            }
            throw new InvalidOperationException($"no tools/guest/Makefile above {AppContext.BaseDirectory}");
        }
    }

    /// <summary>The newest <c>vmlinuz-*</c> in the QEMU root's /boot.</summary>
    /// <param name="qemuRoot">The root from <see cref="Machine.QemuRoot"/>.</param>
    public static string Kernel(string qemuRoot)
    {
        string boot = Path.Combine(qemuRoot, "boot");
        string? kernel = Directory.Exists(boot)
            ? Directory.GetFiles(boot, "vmlinuz-*").OrderBy(f => f, StringComparer.Ordinal).LastOrDefault()
            : null;
        return kernel ?? throw new InvalidOperationException(
            $"no kernel in {boot}: scripts/setup-qemu.sh installs linux-image-cloud-amd64 there");
    }

    /// <summary>The static <c>vism-guest</c> built from this checkout (once per process). Skips
    /// the test when no C compiler is installed.</summary>
    public static string Tool
    {
        get
        {
            lock (BuildLock)
            {
                string tool = Path.Combine(OutputDirectory, "vism-guest");
                if (!_toolBuilt || !File.Exists(tool))
                {
                    Make("all", null);
                    _toolBuilt = true;
                }
                return tool;
            }
        }
    }

    /// <summary>Builds the initramfs (once per process) and returns its path. Skips the test when
    /// no C compiler is installed.</summary>
    /// <param name="qemuRoot">The root whose static busybox goes into the image.</param>
    public static string Initramfs(string qemuRoot)
    {
        lock (BuildLock)
        {
            string image = Path.Combine(OutputDirectory, "vism-guest.cpio.gz");
            if (_initramfsBuilt && File.Exists(image))
                return image;
            Make("initramfs", qemuRoot);
            _initramfsBuilt = _toolBuilt = true;
            return image;
        }
    }

    private static string OutputDirectory => Path.Combine(Path.GetTempPath(), $"vism-guest-image-{Environment.ProcessId}");

    private static void Make(string target, string? qemuRoot)
    {
        Skip.IfNot(OnPath("make") && OnPath("gcc"),
            "building tools/guest needs gcc and make (apt-get install gcc make libc6-dev)");
        var psi = new ProcessStartInfo("make")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string arg in new[] { "-s", "-C", Path.Combine(RepositoryRoot, "tools", "guest"), $"O={OutputDirectory}", target })
            psi.ArgumentList.Add(arg);
        if (qemuRoot is not null)
            psi.Environment["VISM_QEMU_ROOT"] = qemuRoot;
        using var make = Process.Start(psi) ?? throw new InvalidOperationException("cannot start make");
        Task<string> stdout = make.StandardOutput.ReadToEndAsync();
        Task<string> stderr = make.StandardError.ReadToEndAsync();
        if (!make.WaitForExit(TimeSpan.FromMinutes(5)))
        {
            make.Kill(entireProcessTree: true);
            throw new TimeoutException($"make {target} in tools/guest took more than 5 minutes");
        }
        if (make.ExitCode != 0)
            throw new InvalidOperationException($"make -C tools/guest {target} failed ({make.ExitCode}):\n{stdout.Result}{stderr.Result}");
    }

    private static bool OnPath(string tool) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':')
            .Any(dir => dir.Length > 0 && File.Exists(Path.Combine(dir, tool)));
}

/// <summary>How to boot one guest.</summary>
public sealed record QemuGuestOptions
{
    /// <summary>Name used in logs and temp paths.</summary>
    public required string Name { get; init; }

    /// <summary>The vism vhost-user socket; null boots the guest without a vism device.</summary>
    public string? VhostUserSocket { get; init; }

    /// <summary><c>virtio-id</c> of the vhost-user-test-device-pci. QEMU 11.1 aborts on 44 (its name
    /// table has no entry), so the default is 45; vism-guest tries 44, then 45.</summary>
    public int VirtioId { get; init; } = 45;

    /// <summary>Virtqueues of the device (controlq + eventq).</summary>
    public int Queues { get; init; } = 2;

    /// <summary>Device config size (struct virtio_ism_config is 32 bytes).</summary>
    public int ConfigSize { get; init; } = 32;

    /// <summary>Guest RAM in MiB (memfd, shared, as vhost-user requires).</summary>
    public int MemoryMiB { get; init; } = 512;

    /// <summary>The flow the guest's /init runs (<c>vism.role=</c>): a file in tools/guest/flows, or
    /// <c>ring-selftest</c>. Ignored when <see cref="Flow"/> is set.</summary>
    public string? Role { get; init; }

    /// <summary>A flow script given inline; it is appended to the initramfs as /flow.vism.</summary>
    public string? Flow { get; init; }

    /// <summary>More files for the guest's root, appended to the initramfs (path relative to /, contents).</summary>
    public IReadOnlyList<(string Path, byte[] Data)> Files { get; init; } = [];

    /// <summary>Script variables, passed on the kernel command line as <c>vism.KEY=VALUE</c>
    /// (no spaces). Keys id, pci, timeout and verbose set vism-guest options instead.</summary>
    public IReadOnlyDictionary<string, string> Variables { get; init; } = new Dictionary<string, string>();

    /// <summary>More QEMU arguments (for example another <c>-device</c>).</summary>
    public IReadOnlyList<string> ExtraArguments { get; init; } = [];

    /// <summary>After this QEMU is killed and the run reports <see cref="GuestRun.TimedOut"/>.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromMinutes(10);
}

/// <summary>What a finished guest printed.</summary>
/// <param name="Name">The guest's name.</param>
/// <param name="QemuExitCode">QEMU's exit code (-1 when killed).</param>
/// <param name="TimedOut">Whether the harness killed QEMU at the timeout.</param>
/// <param name="FlowExitCode">vism-guest's exit code from the <c>VISM-GUEST END rc=N</c> line, or null if never printed.</param>
/// <param name="Output">The lines between <c>VISM-GUEST BEGIN</c> and <c>VISM-GUEST END</c>.</param>
/// <param name="Console">Everything the serial console and QEMU printed.</param>
public sealed record GuestRun(string Name, int QemuExitCode, bool TimedOut, int? FlowExitCode,
                              IReadOnlyList<string> Output, IReadOnlyList<string> Console)
{
    /// <summary>The first output line that starts with <paramref name="command"/> followed by a space
    /// (vism-guest result lines: <c>alloc token=0x.. offset=0x..</c>), or null.</summary>
    /// <param name="command">The command word, e.g. <c>alloc</c>.</param>
    public string? Line(string command) => Output.FirstOrDefault(l => l.StartsWith(command + " ", StringComparison.Ordinal));

    /// <summary>Every output line that starts with <paramref name="command"/> followed by a space.</summary>
    /// <param name="command">The command word, e.g. <c>event</c>.</param>
    public IReadOnlyList<string> Lines(string command) =>
        Output.Where(l => l.StartsWith(command + " ", StringComparison.Ordinal)).ToList();

    /// <summary>A readable report for test output.</summary>
    public override string ToString() =>
        $"--- guest {Name}: qemu exit {QemuExitCode}{(TimedOut ? " (timed out)" : "")}, vism-guest rc {FlowExitCode?.ToString() ?? "none"}\n"
        + string.Join('\n', Output.Count > 0 ? Output : Console.TakeLast(40));
}

/// <summary>Parses vism-guest result lines.</summary>
public static class GuestOutput
{
    /// <summary>The value of <c>key=value</c> in <paramref name="line"/> (a quoted value keeps its
    /// escapes and loses its quotes), or null.</summary>
    /// <param name="line">A result line.</param>
    /// <param name="key">The key.</param>
    public static string? Field(string? line, string key)
    {
        if (line is null) return null;
        int at = 0;
        while ((at = line.IndexOf(key + "=", at, StringComparison.Ordinal)) >= 0)
        {
            if (at == 0 || line[at - 1] == ' ')
            {
                int start = at + key.Length + 1;
                if (start < line.Length && line[start] == '"')
                {
                    int end = start + 1;
                    while (end < line.Length && line[end] != '"')
                        end += line[end] == '\\' ? 2 : 1;
                    return line[(start + 1)..Math.Min(end, line.Length)];
                }
                int space = line.IndexOf(' ', start);
                return space < 0 ? line[start..] : line[start..space];
            }
            at += key.Length;
        }
        return null;
    }

    /// <summary>A field parsed as a number (0x hex or decimal), or null.</summary>
    /// <param name="line">A result line.</param>
    /// <param name="key">The key.</param>
    public static ulong? Number(string? line, string key)
    {
        string? v = Field(line, key);
        if (v is null) return null;
        return v.StartsWith("0x", StringComparison.Ordinal)
            ? ulong.Parse(v.AsSpan(2), System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture)
            : ulong.Parse(v, System.Globalization.CultureInfo.InvariantCulture);
    }
}

/// <summary>
/// One QEMU 11.1 guest (TCG, q35, memfd shared RAM) booting the guest image, optionally with a
/// vism device (vhost-user-test-device-pci on a socket). QEMU runs from the debootstrap root as
/// <see cref="Qemu.Command"/> says (the root's own dynamic loader, no chroot), so it sees host
/// paths for sockets, kernel and initramfs. The serial console is captured line by line and can
/// be typed on; a timeout kills QEMU.
/// </summary>
public sealed class QemuGuest : IAsyncDisposable
{
    private readonly Process _qemu;
    private readonly TempDir _dir;
    private readonly Action<string>? _log;
    private readonly List<string> _console = [];
    private readonly List<(Func<string, bool> Match, TaskCompletionSource<string> Done)> _waiters = [];
    private readonly Lock _lock = new();
    private readonly CancellationTokenSource _timeout;
    private readonly CancellationTokenRegistration _onTimeout;
    private volatile bool _timedOut;

    private QemuGuest(QemuGuestOptions options, Process qemu, TempDir dir, Action<string>? log)
    {
        Options = options;
        _qemu = qemu;
        _dir = dir;
        _log = log;
        _timeout = new CancellationTokenSource(options.Timeout);
        _onTimeout = _timeout.Token.Register(() =>
        {
            _timedOut = true;
            Kill();
        });
        Completion = WaitAsync();
    }

    /// <summary>How this guest was started.</summary>
    public QemuGuestOptions Options { get; }

    /// <summary>Completes when QEMU has exited (by itself, killed, or at the timeout).</summary>
    public Task<GuestRun> Completion { get; }

    /// <summary>The console lines so far.</summary>
    public IReadOnlyList<string> Console
    {
        get { lock (_lock) return _console.ToList(); }
    }

    /// <summary>The QEMU command line (for logs and the README).</summary>
    public string CommandLine { get; private set; } = "";

    /// <summary>Boots a guest. Skips the test when the QEMU root is not prepared.</summary>
    /// <param name="options">What to boot.</param>
    /// <param name="log">Receives every console line, prefixed with the guest's name.</param>
    public static QemuGuest Start(QemuGuestOptions options, Action<string>? log = null)
    {
        string root = Machine.QemuRoot;
        string kernel = GuestImage.Kernel(root);
        string image = GuestImage.Initramfs(root);
        var dir = new TempDir("vg-" + options.Name);
        try
        {
            string initrd = image;
            if (options.Flow is not null || options.Files.Count > 0)
            {
                initrd = dir["initrd.img"];
                using var file = File.Create(initrd);
                using (var baseImage = File.OpenRead(image))
                    baseImage.CopyTo(file);
                // The kernel looks for the next archive at a 4-byte boundary after the gzip stream.
                while (file.Length % 4 != 0)
                    file.WriteByte(0);
                var files = new List<(string, byte[])>(options.Files);
                if (options.Flow is not null)
                    files.Add(("flow.vism", Encoding.UTF8.GetBytes(options.Flow)));
                Cpio.Write(file, files);
            }
            (string program, string[] prefix, Dictionary<string, string> environment) = Qemu.Command(root);
            var psi = new ProcessStartInfo(program)
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                RedirectStandardInput = true,
                UseShellExecute = false,
            };
            foreach ((string key, string value) in environment)
                psi.Environment[key] = value;
            List<string> args = QemuArguments(kernel, initrd, options);
            foreach (string a in prefix.Concat(args))
                psi.ArgumentList.Add(a);
            var qemu = Process.Start(psi) ?? throw new InvalidOperationException("cannot start QEMU");
            var guest = new QemuGuest(options, qemu, dir, log)
            {
                CommandLine = string.Join(' ', prefix.Skip(2).Concat(args)),
            };
            qemu.StandardInput.AutoFlush = true;
            log?.Invoke($"[{options.Name}] qemu-system-x86_64 {guest.CommandLine}");
            return guest;
        }
        catch
        {
            dir.Dispose();
            throw;
        }
    }

    /// <summary>QEMU's own arguments (after <see cref="Qemu.Command"/>'s prefix).</summary>
    private static List<string> QemuArguments(string kernel, string initrd, QemuGuestOptions o)
    {
        var append = new StringBuilder("console=ttyS0 quiet panic=-1");
        if (o.Role is not null && o.Flow is null)
            append.Append(" vism.role=").Append(o.Role);
        foreach ((string key, string value) in o.Variables)
        {
            if (key.Any(char.IsWhiteSpace) || value.Any(char.IsWhiteSpace))
                throw new ArgumentException($"kernel command line variable '{key}={value}' contains white space");
            append.Append(" vism.").Append(key).Append('=').Append(value);
        }
        var args = new List<string>
        {
            "-nodefaults", "-no-user-config",
            "-machine", "q35,accel=tcg", "-smp", "1", "-m", $"{o.MemoryMiB}M",
            "-object", $"memory-backend-memfd,id=mem,size={o.MemoryMiB}M,share=on", "-machine", "memory-backend=mem",
            "-kernel", kernel, "-initrd", initrd, "-append", append.ToString(),
            "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
        };
        if (o.VhostUserSocket is not null)
        {
            args.AddRange([
                "-chardev", $"socket,id=c0,path={o.VhostUserSocket}",
                "-device", $"vhost-user-test-device-pci,chardev=c0,virtio-id={o.VirtioId},num_vqs={o.Queues},config_size={o.ConfigSize}",
            ]);
        }
        args.AddRange(o.ExtraArguments);
        return args;
    }

    /// <summary>Waits for a console line matching <paramref name="match"/> (lines already printed count).</summary>
    /// <param name="match">The predicate.</param>
    /// <param name="timeout">How long to wait.</param>
    /// <returns>The first matching line.</returns>
    /// <exception cref="TimeoutException">No such line in time; the message has the console's tail.</exception>
    /// <exception cref="InvalidOperationException">The guest finished without printing it.</exception>
    public async Task<string> WaitForLineAsync(Func<string, bool> match, TimeSpan timeout)
    {
        var done = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_lock)
        {
            string? seen = _console.FirstOrDefault(match);
            if (seen is not null) return seen;
            _waiters.Add((match, done));
        }
        Task finished = await Task.WhenAny(done.Task, Completion, Task.Delay(timeout)).ConfigureAwait(false);
        lock (_lock)
        {
            _waiters.RemoveAll(w => w.Done == done);
            string? seen = _console.FirstOrDefault(match);
            if (seen is not null) return seen;
        }
        string tail = string.Join('\n', Console.TakeLast(30));
        if (finished == Completion)
            throw new InvalidOperationException($"guest {Options.Name} finished without printing the awaited line; console tail:\n{tail}");
        throw new TimeoutException($"guest {Options.Name} did not print the awaited line within {timeout}; console tail:\n{tail}");
    }

    /// <summary>Types <paramref name="text"/> and Enter on the guest's serial console (what the
    /// flow's <c>pause</c> command waits for).</summary>
    /// <param name="text">The line, without the newline.</param>
    public void SendLine(string text = "")
    {
        try
        {
            _qemu.StandardInput.Write(text + "\n");
        }
        catch (IOException) { } // QEMU is gone; the run says why
    }

    /// <summary>Kills QEMU (the run then completes).</summary>
    public void Kill()
    {
        try
        {
            if (!_qemu.HasExited) _qemu.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException) { }
    }

    private void OnLine(string? data, bool fromStderr)
    {
        if (data is null) return;
        string line = (fromStderr ? "qemu: " : "") + data.TrimEnd('\r');
        _log?.Invoke($"[{Options.Name}] {line}");
        lock (_lock)
        {
            _console.Add(line);
            foreach (var w in _waiters.Where(w => w.Match(line)).ToList())
            {
                _waiters.Remove(w);
                w.Done.TrySetResult(line);
            }
        }
    }

    private async Task<GuestRun> WaitAsync()
    {
        _qemu.OutputDataReceived += (_, e) => OnLine(e.Data, fromStderr: false);
        _qemu.ErrorDataReceived += (_, e) => OnLine(e.Data, fromStderr: true);
        _qemu.BeginOutputReadLine();
        _qemu.BeginErrorReadLine();
        await _qemu.WaitForExitAsync().ConfigureAwait(false);
        _qemu.WaitForExit(); // drains the redirected streams
        await _onTimeout.DisposeAsync().ConfigureAwait(false); // exited: the timeout no longer applies
        List<string> console;
        lock (_lock) console = _console.ToList();
        int begin = console.FindIndex(l => l.StartsWith("VISM-GUEST BEGIN", StringComparison.Ordinal));
        int end = console.FindIndex(l => l.StartsWith("VISM-GUEST END rc=", StringComparison.Ordinal));
        int? rc = end >= 0 && int.TryParse(console[end]["VISM-GUEST END rc=".Length..], out int v) ? v : null;
        List<string> output = begin >= 0
            ? console.Skip(begin + 1).Take((end > begin ? end : console.Count) - begin - 1).ToList()
            : [];
        return new GuestRun(Options.Name, _qemu.ExitCode, _timedOut, rc, output, console);
    }

    /// <summary>Kills QEMU if it still runs and deletes the guest's temporary files.</summary>
    public async ValueTask DisposeAsync()
    {
        Kill();
        try { await Completion.ConfigureAwait(false); }
        catch (InvalidOperationException) { }
        _timeout.Dispose();
        _qemu.Dispose();
        _dir.Dispose();
    }
}

/// <summary>Writes a small uncompressed newc cpio archive; the kernel unpacks archives appended to
/// a compressed initramfs, so this adds files to the guest image without rebuilding it.</summary>
internal static class Cpio
{
    public static void Write(Stream stream, IEnumerable<(string Path, byte[] Data)> files)
    {
        int ino = 1;
        foreach ((string path, byte[] data) in files)
            Entry(stream, path, data, 0x81a4 /* regular, 0644 */, ino++);
        Entry(stream, "TRAILER!!!", [], 0, 0);
    }

    private static void Entry(Stream s, string name, byte[] data, int mode, int ino)
    {
        byte[] nameBytes = Encoding.UTF8.GetBytes(name + "\0");
        var header = new StringBuilder("070701");
        foreach (long field in new long[] { ino, mode, 0, 0, 1, 0, data.Length, 0, 0, 0, 0, nameBytes.Length, 0 })
            header.Append(field.ToString("x8", System.Globalization.CultureInfo.InvariantCulture));
        byte[] h = Encoding.ASCII.GetBytes(header.ToString());
        s.Write(h);
        s.Write(nameBytes);
        Pad(s, h.Length + nameBytes.Length);
        s.Write(data);
        Pad(s, data.Length);
    }

    private static void Pad(Stream s, int written)
    {
        for (int i = written; i % 4 != 0; i++)
            s.WriteByte(0);
    }
}
