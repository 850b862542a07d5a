using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Vism.Mmio;
using Vism.Native;

namespace Vism.Transport.Mmio.Tests;

/// <summary>
/// Plays a vism from before some message types, between one VMM and a real device: the VMM
/// connects to <see cref="Path"/>; messages of the <c>unknown</c> types are answered
/// <see cref="MmioStatus.UnknownType"/> here (their descriptors closed), as such a device does;
/// everything else travels both ways unchanged, descriptors included.
/// </summary>
internal sealed class OlderDeviceProxy : IDisposable
{
    private readonly UnixSocket _listener;
    private readonly string _device;
    private readonly HashSet<MmioMessageType> _unknown;
    private readonly Lock _toVmm = new();
    private readonly ConcurrentDictionary<MmioMessageType, int> _refused = new();
    private readonly Thread _up;
    private UnixSocket? _vmm, _dev;
    private Thread? _down;

    public OlderDeviceProxy(string device, string path, params MmioMessageType[] unknown)
    {
        _device = device;
        Path = path;
        _unknown = [.. unknown];
        _listener = UnixSocket.Listen(path);
        _up = new Thread(Up) { IsBackground = true, Name = "older-device-proxy" };
        _up.Start();
    }

    /// <summary>Where the VMM connects.</summary>
    public string Path { get; }

    /// <summary>How many messages of <paramref name="type"/> were answered UNKNOWN_TYPE.</summary>
    public int Refused(MmioMessageType type) => _refused.GetValueOrDefault(type);

    private void Up()
    {
        UnixSocket vmm, dev;
        try
        {
            _vmm = vmm = _listener.Accept() ?? throw new IOException("accept found no VMM");
            _dev = dev = UnixSocket.Connect(_device);
        }
        catch (Exception ex) when (ex is PosixException or IOException or ObjectDisposedException)
        {
            return;
        }
        _down = new Thread(() => Pump(dev, vmm, (h, payload, fds) => Forward(vmm, h, payload, fds))) { IsBackground = true, Name = "older-device-proxy-down" };
        _down.Start();
        Pump(vmm, dev, (h, payload, fds) =>
        {
            if (!_unknown.Contains(h.Type) || h.IsReply)
            {
                Forward(dev, h, payload, fds);
                return;
            }
            _refused.AddOrUpdate(h.Type, 1, (_, n) => n + 1);
            Forward(vmm, new MmioHeader(h.Type, MmioMessageFlags.Reply, h.Id, 0, MmioStatus.UnknownType), [], []);
        });
    }

    /// <summary>Reads messages from <paramref name="from"/> until it ends, hands each (with its
    /// descriptors, closed afterwards) to <paramref name="handle"/>, then shuts <paramref name="other"/>.</summary>
    private static void Pump(UnixSocket from, UnixSocket other, Action<MmioHeader, byte[], List<SafeFileHandle>> handle)
    {
        var fds = new List<SafeFileHandle>();
        try
        {
            while (MmioFrame.Receive(from, fds) is var (h, payload))
            {
                handle(h, payload, fds);
                foreach (SafeFileHandle fd in fds) fd.Dispose();
                fds.Clear();
            }
        }
        catch (Exception ex) when (ex is PosixException or IOException or ObjectDisposedException or InvalidDataException)
        {
            // One side went away: so does the proxy.
        }
        finally
        {
            other.Shutdown();
        }
    }

    /// <summary>Sends one message on; both pumps may send to the VMM, one at a time.</summary>
    private void Forward(UnixSocket to, MmioHeader h, byte[] payload, List<SafeFileHandle> fds)
    {
        lock (_toVmm) to.Send(MmioFrame.Build(h.Type, h.Flags, h.Id, payload, h.Status), [.. fds.Cast<SafeHandle>()]);
    }

    public void Dispose()
    {
        _listener.Dispose();
        _vmm?.Shutdown();
        _dev?.Shutdown();
        _up.Join(TimeSpan.FromSeconds(10));
        _down?.Join(TimeSpan.FromSeconds(10));
        _vmm?.Dispose();
        _dev?.Dispose();
    }
}
