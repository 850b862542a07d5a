namespace Vism.Channel;

/// <summary>An <see cref="IsmChannel"/> as a <see cref="Stream"/>: reads return what is available
/// (0 at the end of the stream), writes return once every byte is in the ring, Flush does nothing
/// (each write is published at once). Not seekable.</summary>
public sealed class ChannelStream : Stream
{
    private readonly IsmChannel _channel;

    internal ChannelStream(IsmChannel channel) => _channel = channel;

    /// <summary>The channel.</summary>
    public IsmChannel Channel => _channel;

    /// <inheritdoc />
    public override bool CanRead => true;
    /// <inheritdoc />
    public override bool CanWrite => true;
    /// <inheritdoc />
    public override bool CanSeek => false;
    /// <inheritdoc />
    public override long Length => throw new NotSupportedException();
    /// <inheritdoc />
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    /// <inheritdoc />
    public override int Read(byte[] buffer, int offset, int count) => _channel.ReadSome(buffer.AsSpan(offset, count));
    /// <inheritdoc />
    public override int Read(Span<byte> buffer) => _channel.ReadSome(buffer);
    /// <inheritdoc />
    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        _channel.ReadSomeAsync(buffer, cancellationToken);
    /// <inheritdoc />
    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        _channel.ReadSomeAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    /// <inheritdoc />
    public override void Write(byte[] buffer, int offset, int count) => _channel.WriteAll(buffer.AsSpan(offset, count));
    /// <inheritdoc />
    public override void Write(ReadOnlySpan<byte> buffer) => _channel.WriteAll(buffer);
    /// <inheritdoc />
    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) =>
        _channel.WriteAllAsync(buffer, cancellationToken);
    /// <inheritdoc />
    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        _channel.WriteAllAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    /// <inheritdoc />
    public override void Flush()
    {
    }

    /// <inheritdoc />
    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    /// <inheritdoc />
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    /// <inheritdoc />
    public override void SetLength(long value) => throw new NotSupportedException();

    /// <inheritdoc />
    protected override void Dispose(bool disposing)
    {
        if (disposing) _channel.Dispose();
        base.Dispose(disposing);
    }
}
