using System.Globalization;
using System.Net.Sockets;
using System.Text;

namespace Vism.Testing;

/// <summary>
/// A client of QEMU's qtest protocol (start QEMU with <c>-accel qtest -qtest unix:PATH,server=on,wait=off</c>):
/// port I/O and guest-physical memory accesses from the test, no guest CPU running. With it a test
/// plays the guest driver of a real QEMU device model (PCI config space, BARs, virtio common config),
/// so QEMU's own start sequence reaches the backend. One command at a time; thread-safe.
/// </summary>
public sealed class QtestClient : IDisposable
{
    private readonly Socket _socket;
    private readonly StreamReader _reader;
    private readonly StreamWriter _writer;
    private readonly Lock _lock = new();

    private QtestClient(Socket socket)
    {
        _socket = socket;
        var stream = new NetworkStream(socket, ownsSocket: false);
        _reader = new StreamReader(stream, Encoding.ASCII);
        _writer = new StreamWriter(stream, Encoding.ASCII) { AutoFlush = true, NewLine = "\n" };
    }

    /// <summary>Connects to the qtest socket of <paramref name="qemu"/>, waiting for QEMU to create it.</summary>
    /// <param name="qemu">The QEMU process (its exit ends the wait).</param>
    /// <param name="path">The socket.</param>
    /// <param name="timeout">How long QEMU may take.</param>
    public static QtestClient Connect(Qemu qemu, string path, TimeSpan? timeout = null)
    {
        long deadline = Environment.TickCount64 + (long)(timeout ?? TimeSpan.FromSeconds(60)).TotalMilliseconds;
        while (true)
        {
            if (qemu.Process.HasExited)
                throw new InvalidOperationException($"QEMU exited with {qemu.Process.ExitCode}: {qemu.Stderr}");
            if (File.Exists(path))
            {
                var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    socket.Connect(new UnixDomainSocketEndPoint(path));
                    return new QtestClient(socket);
                }
                catch (SocketException) when (Environment.TickCount64 < deadline)
                {
                    socket.Dispose();
                }
            }
            if (Environment.TickCount64 > deadline) throw new TimeoutException($"qtest did not come up on {path}: {qemu.Stderr}");
            Thread.Sleep(20);
        }
    }

    /// <summary>Sends one command and returns what follows "OK" in the answer.</summary>
    /// <exception cref="InvalidOperationException">QEMU answered FAIL.</exception>
    public string Command(string line)
    {
        lock (_lock)
        {
            _writer.WriteLine(line);
            while (true)
            {
                string reply = _reader.ReadLine() ?? throw new IOException($"qtest closed during '{line}'");
                if (reply.StartsWith("IRQ", StringComparison.Ordinal)) continue; // asynchronous interrupt notices
                if (reply == "OK") return "";
                if (reply.StartsWith("OK ", StringComparison.Ordinal)) return reply[3..];
                throw new InvalidOperationException($"qtest '{line}': {reply}");
            }
        }
    }

    /// <summary>Port output.</summary>
    public void Out(ushort port, uint value, int width) => Command($"out{Suffix(width)} 0x{port:x} 0x{value:x}");

    /// <summary>Port input.</summary>
    public uint In(ushort port, int width) => (uint)Parse(Command($"in{Suffix(width)} 0x{port:x}"));

    /// <summary>A memory read of 1, 2, 4 or 8 bytes (one access of that width).</summary>
    public ulong Read(ulong address, int width) => Parse(Command($"read{MemorySuffix(width)} 0x{address:x}"));

    /// <summary>A memory write of 1, 2, 4 or 8 bytes (one access of that width).</summary>
    public void Write(ulong address, int width, ulong value) => Command($"write{MemorySuffix(width)} 0x{address:x} 0x{value:x}");

    /// <summary>Reads <paramref name="length"/> bytes of guest-physical memory.</summary>
    public byte[] ReadBytes(ulong address, int length) => Convert.FromBase64String(Command($"b64read 0x{address:x} 0x{length:x}"));

    /// <summary>Writes <paramref name="data"/> into guest-physical memory.</summary>
    public void WriteBytes(ulong address, ReadOnlySpan<byte> data) =>
        Command($"b64write 0x{address:x} 0x{data.Length:x} {Convert.ToBase64String(data)}");

    private static ulong Parse(string value) =>
        ulong.Parse(value.StartsWith("0x", StringComparison.Ordinal) ? value[2..] : value, NumberStyles.HexNumber, CultureInfo.InvariantCulture);

    private static string Suffix(int width) => width switch { 1 => "b", 2 => "w", 4 => "l", _ => throw new ArgumentOutOfRangeException(nameof(width)) };

    private static string MemorySuffix(int width) => width == 8 ? "q" : Suffix(width);

    /// <summary>Closes the connection (QEMU keeps running).</summary>
    public void Dispose()
    {
        _writer.Dispose();
        _reader.Dispose();
        _socket.Dispose();
    }
}
