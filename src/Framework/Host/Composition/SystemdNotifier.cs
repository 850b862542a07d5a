using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text;

namespace Vism.Host.Composition;

/// <summary>
/// The service manager's readiness protocol (sd_notify): datagrams such as <c>READY=1</c>,
/// <c>RELOADING=1</c>, <c>STOPPING=1</c>, <c>WATCHDOG=1</c> and <c>STATUS=...</c> sent to the Unix socket
/// named by <c>NOTIFY_SOCKET</c> (a path, or an abstract name starting with <c>@</c>). Absent when
/// vism does not run under systemd with Type=notify.
/// </summary>
public sealed class SystemdNotifier : IDisposable
{
    private readonly Socket _socket;
    private readonly UnixDomainSocketEndPoint _target;

    private SystemdNotifier(string address)
    {
        _socket = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        _target = new UnixDomainSocketEndPoint(address.StartsWith('@') ? "\0" + address[1..] : address);
        Address = address;
    }

    /// <summary>The <c>NOTIFY_SOCKET</c> address.</summary>
    public string Address { get; }

    /// <summary>How often the manager expects <c>WATCHDOG=1</c> (<c>WATCHDOG_USEC</c> for this process); null when it does not.</summary>
    public TimeSpan? WatchdogInterval { get; private init; }

    /// <summary>The notifier for this process, or null when <c>NOTIFY_SOCKET</c> is not set. The
    /// variables are removed so that child processes do not notify in vism's name.</summary>
    public static SystemdNotifier? FromEnvironment()
    {
        string? address = Environment.GetEnvironmentVariable("NOTIFY_SOCKET");
        string? usec = Environment.GetEnvironmentVariable("WATCHDOG_USEC");
        string? pid = Environment.GetEnvironmentVariable("WATCHDOG_PID");
        Environment.SetEnvironmentVariable("NOTIFY_SOCKET", null);
        if (string.IsNullOrEmpty(address) || (address[0] != '/' && address[0] != '@')) return null;
        TimeSpan? watchdog = null;
        if (ulong.TryParse(usec, NumberStyles.None, CultureInfo.InvariantCulture, out ulong us) && us > 0
            && (pid is null || pid == Environment.ProcessId.ToString(CultureInfo.InvariantCulture)))
            watchdog = TimeSpan.FromMicroseconds(us);
        return new SystemdNotifier(address) { WatchdogInterval = watchdog };
    }

    /// <summary>Sends one notification (lines of <c>KEY=value</c>); a failure is returned, never thrown.</summary>
    public string? Notify(string state)
    {
        try
        {
            _socket.SendTo(Encoding.UTF8.GetBytes(state), _target);
            return null;
        }
        catch (SocketException ex)
        {
            return $"cannot notify the service manager on {Address}: {ex.Message}";
        }
    }

    /// <summary><c>MONOTONIC_USEC=</c> now, as RELOADING=1 requires (CLOCK_MONOTONIC).</summary>
    public static string MonotonicNow() =>
        "MONOTONIC_USEC=" + ((ulong)(Stopwatch.GetTimestamp() / (double)Stopwatch.Frequency * 1_000_000)).ToString(CultureInfo.InvariantCulture);

    public void Dispose() => _socket.Dispose();
}
