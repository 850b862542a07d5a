using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.Logging;
using Vism.Native;

namespace Vism.Host.Status;

/// <summary>
/// The status endpoint of a running host: a Unix socket <c>&lt;state-dir&gt;/vism.status</c>. A client
/// connects, writes one request line (<c>status</c>, or <c>reload</c>; nothing within a second counts
/// as <c>status</c>) and reads one JSON answer until end of stream. Served by accepts on
/// the thread pool (host infrastructure, not a device loop); the snapshot is taken from a
/// thread-safe provider.
/// </summary>
public sealed class StatusSocket : IAsyncDisposable
{
    /// <summary>The socket's file name inside the state directory.</summary>
    public const string FileName = "vism.status";

    private readonly Socket _listener;
    private readonly Func<string, Task<string>> _handle;
    private readonly ILogger _log;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _accepting;

    private StatusSocket(string path, Socket listener, Func<string, Task<string>> handle, ILogger log)
    {
        Path = path;
        _listener = listener;
        _handle = handle;
        _log = log;
        _accepting = AcceptAsync();
    }

    /// <summary>The socket path.</summary>
    public string Path { get; }

    /// <summary>Binds the status socket in <paramref name="stateDirectory"/>. Refuses when another live
    /// host answers there; removes a stale socket file left by a host that died.</summary>
    /// <exception cref="InvalidOperationException">Another host is running with this state directory.</exception>
    public static StatusSocket Start(string stateDirectory, Func<string, Task<string>> handle, ILogger log)
    {
        Directory.CreateDirectory(stateDirectory);
        string path = System.IO.Path.Combine(stateDirectory, FileName);
        if (File.Exists(path))
        {
            if (TryRead(path, TimeSpan.FromSeconds(2)) is not null)
                throw new InvalidOperationException($"another vism host is running with state directory {stateDirectory} (it answers on {path})");
            File.Delete(path);
        }
        // UnixSocket.Listen makes the path appear only once the socket listens: `vism status`, or a
        // script that waits for the file, never finds a socket nobody listens on yet.
        UnixSocket bound = UnixSocket.Listen(path, backlog: 16);
        var descriptor = new SafeSocketHandle(bound.Handle.DangerousGetHandle(), ownsHandle: true);
        bound.Handle.SetHandleAsInvalid(); // the Socket owns the descriptor now
        Socket listener;
        try
        {
            listener = new Socket(descriptor);
        }
        catch
        {
            descriptor.Dispose();
            File.Delete(path);
            throw;
        }
        return new StatusSocket(path, listener, handle, log);
    }

    /// <summary>Sends <paramref name="request"/> to the host whose status socket is <paramref name="path"/>
    /// and returns its answer; null when none answers.</summary>
    public static string? TryRead(string path, TimeSpan timeout, string request = "status")
    {
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            socket.ReceiveTimeout = (int)timeout.TotalMilliseconds;
            socket.Connect(new UnixDomainSocketEndPoint(path));
            socket.Send(Encoding.UTF8.GetBytes(request + "\n"));
            using var stream = new NetworkStream(socket, ownsSocket: false);
            using var reader = new StreamReader(stream, Encoding.UTF8);
            return reader.ReadToEnd();
        }
        catch (SocketException)
        {
            return null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    private async Task AcceptAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await _listener.AcceptAsync(_stop.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (SocketException ex)
            {
                _log.LogWarning("status socket: accept failed: {Error}", ex.Message);
                return;
            }
            catch (ObjectDisposedException)
            {
                return;
            }
            _ = ServeAsync(client);
        }
    }

    private async Task ServeAsync(Socket client)
    {
        using (client)
        {
            try
            {
                string request = await ReadRequestAsync(client).ConfigureAwait(false);
                byte[] body = Encoding.UTF8.GetBytes(await _handle(request).ConfigureAwait(false));
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
                timeout.CancelAfter(TimeSpan.FromSeconds(5));
                await client.SendAsync(body, SocketFlags.None, timeout.Token).ConfigureAwait(false);
                client.Shutdown(SocketShutdown.Send);
            }
            catch (Exception ex) when (ex is SocketException or OperationCanceledException or ObjectDisposedException)
            {
                _log.LogDebug("status socket: a client went away: {Error}", ex.Message);
            }
            catch (Exception ex)
            {
                _log.LogError(ex, "status socket: building the status report failed");
            }
        }
    }

    /// <summary>Reads the request line (at most 64 bytes); an empty string when the client sends none within a second.</summary>
    private async Task<string> ReadRequestAsync(Socket client)
    {
        var buffer = new byte[64];
        int length = 0;
        using var wait = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
        wait.CancelAfter(TimeSpan.FromSeconds(1));
        try
        {
            while (length < buffer.Length && Array.IndexOf(buffer, (byte)'\n', 0, length) < 0)
            {
                int n = await client.ReceiveAsync(buffer.AsMemory(length), SocketFlags.None, wait.Token).ConfigureAwait(false);
                if (n == 0) break;
                length += n;
            }
        }
        catch (OperationCanceledException) when (!_stop.IsCancellationRequested)
        {
            // An old client that only reads: answer with the status.
        }
        return Encoding.UTF8.GetString(buffer, 0, length).Split('\n')[0].Trim();
    }

    /// <summary>Stops serving and removes the socket file.</summary>
    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        _listener.Dispose();
        await _accepting.ConfigureAwait(false);
        try { File.Delete(Path); } catch (IOException) { }
        _stop.Dispose();
    }
}
