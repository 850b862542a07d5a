using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Vism.Testing;

/// <summary>
/// QEMU 11.1 from the root <c>scripts/setup-qemu.sh</c> prepared (<see cref="Machine.QemuRoot"/>),
/// run on the host without chroot: the binary is started through the root's own dynamic loader with
/// the root's library directories, firmware is found with <c>-L</c> (the root's
/// <c>/usr/share/qemu</c> links its BIOS into <c>/usr/share/seabios</c>, so both are given), and
/// modules come from <c>QEMU_MODULE_DIR</c>. Host paths (sockets, memfds, /dev/kvm) then work as they
/// are. The process is killed on dispose if it is still running.
/// </summary>
public sealed class Qemu : IDisposable
{
    private readonly StringBuilder _stderr = new();
    private readonly StringBuilder _stdout = new();

    private Qemu(Process process, string? qmpPath)
    {
        Process = process;
        QmpPath = qmpPath;
    }

    /// <summary>The QEMU process.</summary>
    public Process Process { get; }

    /// <summary>The QMP socket, when one was asked for.</summary>
    public string? QmpPath { get; }

    /// <summary>What QEMU wrote to stderr so far (for assertion messages).</summary>
    public string Stderr
    {
        get { lock (_stderr) return _stderr.ToString(); }
    }

    /// <summary>What QEMU wrote to stdout so far.</summary>
    public string Stdout
    {
        get { lock (_stdout) return _stdout.ToString(); }
    }

    /// <summary>The command that runs <c>qemu-system-x86_64</c> from <paramref name="root"/>:
    /// the program, the arguments that come before QEMU's own, and the environment to add.</summary>
    /// <param name="root">The prepared root.</param>
    public static (string Program, string[] Prefix, Dictionary<string, string> Environment) Command(string root)
    {
        string libs = $"{root}/lib/x86_64-linux-gnu:{root}/usr/lib/x86_64-linux-gnu";
        return ($"{root}/lib64/ld-linux-x86-64.so.2",
            ["--library-path", libs, $"{root}/usr/bin/qemu-system-x86_64", "-L", $"{root}/usr/share/qemu", "-L", $"{root}/usr/share/seabios"],
            new Dictionary<string, string> { ["QEMU_MODULE_DIR"] = $"{root}/usr/lib/x86_64-linux-gnu/qemu" });
    }

    /// <summary>Starts QEMU with <paramref name="arguments"/>; with <paramref name="qmpPath"/> a QMP
    /// server socket is added (<c>-qmp unix:PATH,server=on,wait=off</c>).</summary>
    /// <param name="root">The prepared root (<see cref="Machine.QemuRoot"/>).</param>
    /// <param name="arguments">QEMU's arguments.</param>
    /// <param name="qmpPath">Where QMP listens, or null.</param>
    public static Qemu Start(string root, IEnumerable<string> arguments, string? qmpPath = null)
    {
        (string program, string[] prefix, Dictionary<string, string> env) = Command(root);
        // Debugging aid: VISM_QEMU_WRAPPER="gdb -batch -ex run -ex bt --args" runs QEMU under a wrapper.
        string[] wrapper = (Environment.GetEnvironmentVariable("VISM_QEMU_WRAPPER") ?? "").Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (wrapper.Length > 0)
        {
            prefix = [.. wrapper[1..], program, .. prefix];
            program = wrapper[0];
        }
        var psi = new ProcessStartInfo(program)
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (string a in prefix) psi.ArgumentList.Add(a);
        foreach (string a in arguments) psi.ArgumentList.Add(a);
        if (qmpPath is not null)
        {
            psi.ArgumentList.Add("-qmp");
            psi.ArgumentList.Add($"unix:{qmpPath},server=on,wait=off");
        }
        foreach ((string k, string v) in env) psi.Environment[k] = v;
        var process = new Process { StartInfo = psi };
        var qemu = new Qemu(process, qmpPath);
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (qemu._stderr) qemu._stderr.AppendLine(e.Data); };
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (qemu._stdout) qemu._stdout.AppendLine(e.Data); };
        process.Start();
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();
        return qemu;
    }

    /// <summary>Connects to the QMP socket (waiting for QEMU to create it) and leaves capabilities
    /// negotiation mode.</summary>
    /// <param name="timeout">How long QEMU may take to come up.</param>
    public QmpClient Qmp(TimeSpan? timeout = null)
    {
        if (QmpPath is null) throw new InvalidOperationException("QEMU was started without a QMP socket");
        long deadline = Environment.TickCount64 + (long)(timeout ?? TimeSpan.FromSeconds(60)).TotalMilliseconds;
        while (true)
        {
            if (Process.HasExited)
                throw new InvalidOperationException($"QEMU exited with {Process.ExitCode} before QMP came up: {Stderr}");
            if (File.Exists(QmpPath))
            {
                try
                {
                    return QmpClient.Connect(QmpPath);
                }
                catch (SocketException) when (Environment.TickCount64 < deadline)
                {
                }
            }
            if (Environment.TickCount64 > deadline)
                throw new TimeoutException($"QMP did not come up on {QmpPath}: {Stderr}");
            Thread.Sleep(20);
        }
    }

    /// <summary>Waits for QEMU to exit, and then for the last of its output (so <see cref="Stderr"/> is complete).</summary>
    /// <returns>Whether it exited in time.</returns>
    public bool WaitForExit(TimeSpan timeout)
    {
        if (!Process.WaitForExit(timeout)) return false;
        Process.WaitForExit();
        return true;
    }

    /// <summary>Kills QEMU if it still runs.</summary>
    public void Dispose()
    {
        try
        {
            if (!Process.HasExited)
            {
                Process.Kill(entireProcessTree: true);
                Process.WaitForExit(10_000);
            }
        }
        catch (InvalidOperationException)
        {
        }
        Process.Dispose();
    }
}

/// <summary>A minimal QMP client: one JSON object per line over a Unix socket.</summary>
public sealed class QmpClient : IDisposable
{
    private readonly Socket _socket;
    private readonly StreamReader _reader;
    private readonly StreamWriter _writer;

    private QmpClient(Socket socket)
    {
        _socket = socket;
        var stream = new NetworkStream(socket, ownsSocket: false);
        _reader = new StreamReader(stream, Encoding.UTF8);
        _writer = new StreamWriter(stream, new UTF8Encoding(false)) { AutoFlush = true, NewLine = "\n" };
    }

    /// <summary>The greeting QEMU sent.</summary>
    public JsonNode? Greeting { get; private set; }

    /// <summary>Events received while waiting for replies.</summary>
    public List<JsonNode> Events { get; } = [];

    /// <summary>Connects and sends <c>qmp_capabilities</c>.</summary>
    /// <param name="path">The QMP socket.</param>
    public static QmpClient Connect(string path)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            socket.Connect(new UnixDomainSocketEndPoint(path));
            var client = new QmpClient(socket);
            client.Greeting = client.ReadObject();
            client.Execute("qmp_capabilities");
            return client;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>Runs a command and returns its <c>return</c> value.</summary>
    /// <param name="command">The command name.</param>
    /// <param name="arguments">Its arguments, or null.</param>
    /// <exception cref="InvalidOperationException">QEMU answered with an error.</exception>
    public JsonNode? Execute(string command, JsonObject? arguments = null)
    {
        var request = new JsonObject { ["execute"] = command };
        if (arguments is not null) request["arguments"] = arguments;
        _writer.WriteLine(request.ToJsonString());
        while (true)
        {
            JsonNode reply = ReadObject() ?? throw new IOException($"QMP closed while waiting for {command}");
            if (reply["event"] is not null)
            {
                Events.Add(reply);
                continue;
            }
            if (reply["error"] is JsonNode error)
                throw new InvalidOperationException($"QMP {command} failed: {error.ToJsonString()}");
            return reply["return"];
        }
    }

    private JsonNode? ReadObject()
    {
        string? line = _reader.ReadLine();
        return line is null ? null : JsonNode.Parse(line);
    }

    /// <summary>Closes the QMP connection.</summary>
    public void Dispose()
    {
        _writer.Dispose();
        _reader.Dispose();
        _socket.Dispose();
    }
}
